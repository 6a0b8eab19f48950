"""Every sentence the SMS side of the ticket loop sends, by key. Each fits one 70-character SMS
with its values filled in and carries the reference number. config.yml `sms.texts` overrides
any of them without a code change."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_TEXTS: dict[str, str] = {
    # acknowledgements of a photo report (answered at once by the webhook)
    "ack_report": "已收到您的照片报修，编号{ref}。正在识别问题和地点，稍后短信告诉您。",
    "ack_more": "已收到第{count}张照片，归入报修{ref}。",
    "ack_text_added": "已补充到报修{ref}。",
    "ack_too_many": "每次报修最多收{max}张照片，已收前{count}张。编号{ref}。",
    "ack_media_refused": "这个文件收不了，只能收照片(jpg/png)。请拍照后再发。",
    "ack_media_refused_ref": "有文件收不了，只能收照片(jpg/png)。编号{ref}。",
    # follow-ups from the background job
    "routed": "报修{ref}：{category}，地点{place}，已派给{department}。",
    "triage": "报修{ref}已收到，工作人员会尽快分派处理。",
    "ask_location": "报修{ref}：在哪个小区哪栋楼？请直接回复地址。",
    "ask_location_outside": "报修{ref}：照片位置不在本社区范围。在哪个小区哪栋楼？请回复地址。",
    "location_thanks": "收到地址，报修{ref}正在分派。",
    "duplicate": "报修{ref}：这个问题已有人报过(编号{original})，已合并处理，好了会通知您。",
    "media_failed": "报修{ref}：有{count}张照片没收到({reason})，其他内容已受理。",
    # public steps (department side)
    "accepted": "报修{ref}已由{department}接单，会尽快处理。",
    "in_progress": "报修{ref}正在处理中。",
    "resolved": "报修{ref}已处理好：{note}。请回复“评价5”打分，1最差5最好。",
    "rejected": "报修{ref}不能受理：{note}。有疑问回复0转人工。",
    "reopened": "报修{ref}已重新处理，会再通知您。",
    "cancelled": "报修{ref}已取消。",
    "rated": "谢谢您的评价({score}分)，报修{ref}已结束。",
    "rated_low": "抱歉没让您满意({score}分)，报修{ref}已重新派单，工作人员会回访。",
    # staff: an overdue work order, to its department's head
    "overdue_head": "超期提醒：工单{ref}（{category}）已超过办理时限{hours}小时，请尽快处理。",
    # keywords
    "opted_out": "已退订，不再给您发通知短信。想恢复请回复“开通”。",
    "opted_in": "已恢复短信通知。退订请回复TD。",
    "progress_item": "编号{ref}：{category}，{status}。",
    "progress_none": "没查到编号{ref}。请核对8位编号，或回复0转人工。",
    "progress_none_phone": "没查到您办的事。请回复“进度”加8位编号。",
    "rate_none": "没找到要评价的报修。请回复“评价5 编号”。",
    "rate_usage": "请回复“评价”加1到5的数字，比如“评价5”。",
    "empty": "没收到内容。请发文字说明问题，或拍照发来。找人工回复0。",
    "too_long": "内容太长了，请用一两句话说明要办的事。找人工回复0。",
    "busy": "系统有点忙，没收到您这条短信，请过几分钟再发一次。急事请拨打{hotline}。",
}


def texts_from_config(overrides: Mapping[str, Any] | None) -> dict[str, str]:
    return {**DEFAULT_TEXTS, **{str(k): str(v) for k, v in (overrides or {}).items()}}
