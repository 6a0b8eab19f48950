"""Work orders: the two-level taxonomy from config.yml, routing to departments, the kind of
request, the ≤70-character summary, and what `parse` / `nlu-eval` show for reports."""
from __future__ import annotations

import json

import pytest
import yaml
from test_nlu import _cli

from assistant.config import ROOT
from assistant.work_orders import SUMMARY_CHARS, Taxonomy, request_kind, summarise

CONFIG = yaml.safe_load((ROOT / "config.yml").read_text(encoding="utf-8"))
TAXONOMY = Taxonomy.from_config(CONFIG["tickets"])


def test_the_default_areas_are_12345s_first_level():
    assert [a.name for a in TAXONOMY.areas] == ["城乡建设", "环境保护", "交通运输", "劳动和社会保障", "商贸旅游",
                                               "卫生计生", "教育文体", "民政", "公安", "其他"]


def test_community_categories_sit_under_their_area():
    area = {c.code: TAXONOMY.area_of(c).name for c in TAXONOMY.categories}
    assert area["municipal"] == area["property"] == "城乡建设"
    assert area["sanitation"] == area["noise"] == "环境保护"
    assert area["fire"] == "公安" and area["wages"] == "劳动和社会保障"


def test_every_area_is_a_category_routed_to_the_areas_department():
    education = TAXONOMY.get("education")
    assert education is not None and education.name == "教育文体"
    assert TAXONOMY.department(education) == "街道文教科"
    assert TAXONOMY.department(TAXONOMY.get("other")) is None  # 人工分拣
    # A category's own department comes first, the area's when it has none.
    assert TAXONOMY.department(TAXONOMY.get("property")) == "物业公司"


def test_keywords_count_only_within_the_chosen_area():
    text = "物业公司拖欠保安工资三个月"
    assert TAXONOMY.categorise(text).code in {"property", "wages"}
    assert TAXONOMY.categorise(text, within=TAXONOMY.area_by_name["劳动和社会保障"]).code == "wages"
    # Nothing of the area's categories in the text: the area's own category.
    assert TAXONOMY.categorise("孩子入学划片不合理", within=TAXONOMY.area_by_name["教育文体"]).code == "education"


def test_a_category_naming_an_unknown_area_is_refused_at_start():
    tickets = {"areas": [{"code": "civil", "name": "民政"}],
               "taxonomy": [{"code": "x", "name": "某类", "area": "nowhere", "keywords": []}]}
    with pytest.raises(ValueError, match="nowhere"):
        Taxonomy.from_config(tickets)


def test_the_old_flat_taxonomy_still_loads_with_the_default_areas():
    flat = Taxonomy.from_config(CONFIG["tickets"]["taxonomy"])
    assert flat.get("municipal") is not None and len(flat.areas) == 10


@pytest.mark.parametrize(("text", "kind"), [
    ("小区门口的路灯坏了一个月了没人管", "投诉"),
    ("请问高龄津贴需要什么材料", "咨询"),
    ("建议在菜场门口增设一个公交站", "建议"),
    ("老板跑了，我们实在没办法了，求求政府帮帮我们", "求助"),
    ("请问到底有没有人管？电梯坏了三个月了", "投诉"),  # a rhetorical question is still a complaint
])
def test_request_kind(text, kind):
    assert request_kind(text) == kind


def test_summary_skips_greetings_and_fits_one_segment():
    text = ("尊敬的领导：您好！我是和平小区5栋的居民。我们楼下的烧烤店每天营业到凌晨三点，油烟直接往楼上灌，"
            "噪音吵得老人整夜睡不着，我们找过店主好几次，他根本不理。希望有关部门管一管。")
    summary = summarise(text)
    assert summary.startswith("我们楼下的烧烤店") and len(summary) <= SUMMARY_CHARS
    assert summarise("路灯坏了") == "路灯坏了"
    one_long_sentence = "我们小区" + "，".join(["电梯坏了没人修", "楼道灯也不亮", "垃圾堆了一星期"] * 6)
    cut = summarise(one_long_sentence)
    assert len(cut) <= SUMMARY_CHARS and cut.endswith("…") and "，…" not in cut


def test_parse_prints_the_report_object(model_dir, nlu):
    lines = _cli("parse", stdin="和平小区门口的路灯坏了好几天了\n我要订饭\n", model_dir=model_dir).stdout.splitlines()
    report_row, meal_row = (json.loads(line) for line in lines)
    assert report_row["intent"]["name"] == "report_issue"
    report = report_row["report"]
    assert report["area"] == "城乡建设" and report["category"] == "市政设施"
    assert report["department"] == "街道城管科" and report["kind"] == "投诉"
    assert report["summary"] == "和平小区门口的路灯坏了好几天了"
    assert "report" not in meal_row


def test_nlu_eval_reads_a_file_of_labelled_messages(tmp_path, model_dir, nlu):
    path = tmp_path / "complaints.yml"
    path.write_text(yaml.safe_dump({"version": 1, "complaints": [
        {"area": "城乡建设", "kind": "投诉", "text": "我们小区的路灯坏了半个月了，晚上老人出门摔了好几次，一直没人来修。"},
        {"area": "其他", "kind": "咨询", "text": "明天去南京的火车票还有吗"},
    ]}, allow_unicode=True), encoding="utf-8")
    summary = json.loads(_cli("nlu-eval", str(path), stdin="", model_dir=model_dir).stdout.splitlines()[-1])
    assert summary["n"] == 2 and summary["filed_as_report"] == 0.5 and summary["area_accuracy"] == 1.0
    halves = [json.loads(_cli("nlu-eval", str(path), "--half", half, stdin="", model_dir=model_dir)
                         .stdout.splitlines()[-1])["n"] for half in ("tune", "confirm")]
    assert sum(halves) == 2
