"""Open311 GeoReport v2: services, reading requests without personal data, filing requests."""
from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

from fixtures.twilio_world import RESIDENT, jpeg
from sms_fixtures import PUBLIC_BASE_URL, reference_in

from channels.open311 import MEDIA_LINK_SECONDS, media_links

KEY = "city-tool-key"


def _signed(url: str) -> bool:
    query = parse_qs(urlsplit(url).query)
    return set(query) == {"expires", "sig"} and len(query["sig"][0]) == 64


def _photo_link(sms) -> str:
    """The media_url of a fresh MMS report, as a path on this app."""
    reference = reference_in(sms.send("阳光小区3号楼路灯坏了",
                                      media=[(sms.media.add("link.jpg", jpeg("red")), "image/jpeg")])[0])
    sms.run_jobs(after_seconds=121)
    [item] = sms.client.get(f"/open311/v2/requests/{reference}.json").get_json()
    assert item["media_url"] and _signed(item["media_url"])
    return item["media_url"].removeprefix(PUBLIC_BASE_URL)


def test_services_list_the_taxonomy(sms):
    services = sms.client.get("/open311/v2/services.json").get_json()
    codes = {s["service_code"]: s for s in services}
    assert {"municipal", "sanitation", "fire", "property", "noise", "other"} <= set(codes)
    assert codes["fire"]["service_name"] == "消防安全" and codes["fire"]["metadata"] is False
    assert codes["fire"]["type"] == "realtime" and codes["fire"]["group"] == "街道消防科"


def test_public_reads_carry_no_personal_data_and_link_the_photo(sms):
    reference = reference_in(sms.send("阳光小区3号楼2单元501门口路灯坏了 我电话13712345678",
                                      media=[(sms.media.add("o311.jpg", jpeg()), "image/jpeg")])[0])
    sms.run_jobs(after_seconds=121)
    [item] = sms.client.get(f"/open311/v2/requests/{reference}.json").get_json()
    assert item["service_request_id"] == reference and item["status"] == "open"
    assert item["service_code"] == "municipal" and item["agency_responsible"] == "街道城管科"
    assert item["address"] == "阳光小区3号楼2单元" and item["lat"] == 39.9151
    assert item["description"] is None  # a resident's SMS text stays private
    # The reference and the signed photo link are random digits/hex that may contain "501" by chance.
    text = str({k: v for k, v in item.items() if k not in ("service_request_id", "media_url")})
    for secret in ("13712345678", "13800138000", RESIDENT, "501"):
        assert secret not in text
    for secret in ("13712345678", "13800138000", RESIDENT):
        assert secret not in item["media_url"]
    assert item["media_url"].startswith("https://sms.example.org/open311/media/")
    photo = sms.client.get(item["media_url"].removeprefix("https://sms.example.org"))
    assert photo.status_code == 200 and photo.data[:3] == b"\xff\xd8\xff"
    listed = sms.client.get("/open311/v2/requests.json?status=open&service_code=municipal").get_json()
    assert [i["service_request_id"] for i in listed] == [reference]
    assert _signed(listed[0]["media_url"])
    assert sms.client.get("/open311/v2/requests.json?status=closed").get_json() == []
    assert sms.client.get("/open311/v2/requests/31234567.json").status_code == 404
    assert sms.client.get("/open311/media/" + "0" * 64 + ".jpg").status_code == 403  # unsigned
    assert sms.client.get("/open311/v2/requests.json?start_date=yesterday").status_code == 400


def test_city_tools_file_requests_that_enter_the_loop(sms):
    response = sms.client.post("/open311/v2/requests.json", data={
        "api_key": KEY, "service_code": "fire", "lat": "39.9202", "long": "116.4101",
        "description": "消防通道被杂物堵住", "phone": "13600136000"})
    assert response.status_code == 201
    [created] = response.get_json()
    reference = created["service_request_id"]
    sms.run_jobs()
    [item] = sms.client.get(f"/open311/v2/requests/{reference}.json").get_json()
    assert item["status"] == "open" and item["agency_responsible"] == "街道消防科"
    assert item["description"] == "消防通道被杂物堵住" and item["address"] == "幸福里小区"
    assert any(reference in m.body for m in sms.api.sent if m.to == "+8613600136000")
    sms.loop.desk.staff_action(reference, "accept", "staff:li")
    sms.loop.desk.staff_action(reference, "resolve", "staff:li", note="已清理")
    [item] = sms.client.get(f"/open311/v2/requests/{reference}.json").get_json()
    assert item["status"] == "closed" and item["status_notes"] == "已清理"


def test_filing_needs_a_key_a_known_service_and_a_place(sms):
    post = sms.client.post
    assert post("/open311/v2/requests.json", data={"service_code": "fire", "lat": "39.9", "long": "116.4"}
                ).status_code == 403
    assert post("/open311/v2/requests.json", data={"api_key": "wrong", "service_code": "fire", "lat": "1",
                                                   "long": "2"}).status_code == 403
    bad = post("/open311/v2/requests.json", data={"api_key": KEY, "service_code": "nope", "lat": "39.9",
                                                  "long": "116.4"})
    assert bad.status_code == 400 and bad.get_json()[0]["code"] == 400
    assert post("/open311/v2/requests.json", data={"api_key": KEY, "service_code": "fire"}).status_code == 400
    assert post("/open311/v2/requests.json", data={"api_key": KEY, "service_code": "fire", "lat": "abc",
                                                   "long": "1"}).status_code == 400
    assert post("/open311/v2/requests.json", data={"api_key": KEY, "service_code": "fire", "lat": "99",
                                                   "long": "1"}).status_code == 400


def test_photos_are_reachable_only_through_a_signed_unexpired_link(sms):
    link = _photo_link(sms)
    path, query = link.split("?")
    params = {k: v[0] for k, v in parse_qs(query).items()}
    name = path.rsplit("/", 1)[1]
    ok = sms.client.get(link)
    assert ok.status_code == 200 and ok.data[:3] == b"\xff\xd8\xff"
    assert "private" in ok.headers["Cache-Control"] and "public" not in ok.headers["Cache-Control"]
    refused = {
        "unsigned": path,
        "no expiry": f"{path}?sig={params['sig']}",
        "forged signature": f"{path}?{urlencode({**params, 'sig': '0' * 64})}",
        "signature in capitals": f"{path}?{urlencode({**params, 'sig': params['sig'].upper()})}",
        "expiry pushed later": f"{path}?{urlencode({**params, 'expires': int(params['expires']) + 3600})}",
        "signature of another photo": f"/open311/media/{'a' * 64}.jpg?{query}",
        "non-ASCII signature": f"{path}?{urlencode({**params, 'sig': '签名'})}",
    }
    for case, url in refused.items():
        response = sms.client.get(url)
        assert response.status_code == 403, case
        assert response.get_json()[0]["code"] == 403 and response.data[:3] != b"\xff\xd8\xff", case
    # A valid signature for a photo that does not exist: 404, never the file.
    missing = media_links(sms.runtime).path("b" * 64 + ".jpg")
    assert sms.client.get(missing).status_code == 404
    assert name.endswith(".jpg") and len(name) == 64 + 4
    # The link dies after its lifetime; reading the request again gives a new one that works.
    sms.clock.advance(seconds=MEDIA_LINK_SECONDS + 1)
    assert sms.client.get(link).status_code == 403
    fresh = sms.client.get("/open311/v2/requests.json?status=open").get_json()[0]["media_url"]
    assert fresh.removeprefix(PUBLIC_BASE_URL) != link
    assert sms.client.get(fresh.removeprefix(PUBLIC_BASE_URL)).status_code == 200


def test_a_link_signed_with_another_key_store_is_refused(sms):
    from channels.open311 import MediaLinks

    link = _photo_link(sms)
    name = urlsplit(link).path.rsplit("/", 1)[1]
    other = MediaLinks(b"\x01" * 32, sms.clock).path(name)
    assert sms.client.get(other).status_code == 403
