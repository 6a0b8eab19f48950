"""The sentences care alerts send (staff and family SMS, what the alert call says), by name.
`alerts.texts` in config.yml overrides any of them; a rule's `what_<rule>` names what happened."""
from __future__ import annotations

# What staff, families and seniors read or hear. Override any of them in `alerts.texts`.
# Staff get the address and what to do; family get what happened and who is on the way; the
# senior only ever hears the check-in question (or, for gas, what to do right now).
DEFAULT_TEXTS: dict[str, str] = {
    "what_no_water": "白天{hours}小时未用水",
    "what_electricity_drop": "用电量比平时下降{percent}%",
    "what_no_door": "{hours}小时未开门",
    "what_gas_leak": "燃气泄漏报警",
    "what_heart_rate": "心率异常（{value}次/分）持续{minutes}分钟",
    "what_sensor_offline": "{device_label}已{hours}小时无数据",
    "what_checkin_missed": "今天平安电话打了{attempts}次没人接",
    "what_checkin_help": "平安电话中老人表示需要帮助",
    "staff_raised": "【关爱提醒{alert}】{grid}网格{senior}（{address}）：{what}。{todo}回复1或“收到”确认，上门后回复2（同时有几条提醒时加编号，如“1 {alert}”）。",
    "staff_todo_sla": "请{ack}分钟内电话联系{visit}。",
    "staff_todo_visit": "，{visit}分钟内上门",
    "staff_todo_none": "请尽快联系。",
    "staff_escalated": "【升级{alert}】{grid}网格{senior}（{address}）：{what}，{why}。请立即处理，回复1或“收到”确认。",
    "why_ack": "{minutes}分钟内无人确认",
    "why_visit": "{minutes}分钟内未上门",
    "why_senior": "老人电话中按0要求社区联系",
    "family_raised": "【社区关爱】您的家人{senior}家中{what}。已通知{who}，会尽快电话联系或上门。",
    "family_severe": "【社区紧急】您的家人{senior}家中{what}，已通知119和{who}，请尽快联系老人。",
    "family_acknowledged": "【社区关爱】{who}已确认，正在处理{senior}家的情况。",
    "family_visited": "【社区关爱】{who}已上门看望{senior}。",
    "family_cleared": "【社区关爱】{senior}家中情况已恢复正常（{what}）。",
    "staff_cleared": "【关爱提醒{alert}】{senior}家已恢复正常：{what}。",
    "ack_ok": "已确认关爱提醒{alert}，谢谢。上门后请回复2。",
    "ack_already": "关爱提醒{alert}已有人确认，谢谢。",
    "visit_ok": "已记录上门（关爱提醒{alert}），谢谢。",
    "family_reply": "已收到您的回复，社区工作人员正在处理，有情况会再短信告诉您。",
    "who_default": "社区工作人员",
    "checkin_call": "{title}您好，这里是社区。按1表示一切平安，按0转社区。",
    "gas_call": "{title}您好，这里是社区。家里燃气报警了，请马上关掉燃气阀门，打开窗户，到门外去。消防和家人已经通知了。按1表示听到了。",
    "call_thanks": "好的，谢谢您，祝您平安。",
    "call_transfer": "好的，马上请社区工作人员联系您。",
    "call_no_input": "没有听到按键，社区工作人员会再联系您。",
    # What an offline device is called in "{device_label}已{hours}小时无数据"; add `device_<kind>` for a new kind.
    "device_water": "水表", "device_electricity": "电表", "device_gas": "燃气报警器", "device_door": "门磁",
    "device_heart_rate": "手环", "device_bed": "床垫", "device_other": "设备",
}
