"""Deployment: the reference systemd units and gunicorn settings (deploy/systemd/,
deploy/gunicorn.conf.py, deploy/assistant.env.example) and a production-shaped cluster on
loopback built from Debian packages (deploy/local_cluster.py) that the fault tests run against."""
