"""The SMS keywords and the reply's length limit, without a database."""

from __future__ import annotations

import pytest

from dialogs.output import Say
from dialogs.sms.keywords import Command, parse, parse_receipt
from ivrs.render.sms_text import segments
from ivrs.demo.texter import parse_reply
from ivrs.conversations.texts import reply


@pytest.mark.parametrize("body, expected", [
    ("KIT 100234", Command("kit", ("100234",))),
    ("  kit 100234, 100235;100236 ", Command("kit", ("100234", "100235", "100236"))),
    ("100234", Command("number", ("100234",))),
    ("disp 1010001", Command("dispense", ("1010001",))),
    ("Recv 500001 damaged 1", Command("receive", ("500001", "damaged", "1"))),
    ("STOCK", Command("stock")), ("status 1010001", Command("status", ("1010001",))),
    ("lang fr", Command("language", ("fr",))), ("help", Command("help")),
    ("stop", Command("stop")), ("Unsubscribe", Command("stop")), ("START", Command("start")),
    ("stop the dispensing", Command("unknown", ("the", "dispensing"))),
    ("", Command("empty")), (None, Command("empty")), ("   \n ", Command("empty")),
    ("hello", Command("unknown")), ("12 34", Command("unknown", ("34",))),
])
def test_parse(body, expected):
    assert parse(body) == expected


def test_a_huge_body_is_cut_to_a_bounded_number_of_arguments():
    command = parse("KIT " + " ".join(["1"] * 10_000))
    assert command.name == "kit" and len(command.args) == 40


@pytest.mark.parametrize("args, damaged, missing", [
    (("500001",), (), ()),
    (("500001", "DAMAGED", "1", "2"), ("1", "2"), ()),
    (("500001", "missing", "3", "damaged", "1"), ("1",), ("3",)),
])
def test_receipt(args, damaged, missing):
    receipt = parse_receipt(args)
    assert (receipt.shipment, receipt.damaged, receipt.missing) == ("500001", damaged, missing)


@pytest.mark.parametrize("args", [
    (), ("X1",), ("500001", "DAMAGED"), ("500001", "1"), ("500001", "DAMAGED", "x"),
    ("500001", "DAMAGED", "1", "DAMAGED", "2"), ("500001", "BROKEN", "1"),
])
def test_malformed_receipts_are_refused(args):
    assert parse_receipt(args) is None


def test_a_reply_longer_than_three_segments_is_cut_and_says_so():
    says = [Say("sms.stock", {"site": f"{n:03d}", "available": 9999, "quarantined": 9999,
                              "incoming": 9999}) for n in range(12)]
    text = parse_reply(200, reply(says, "en"), "SM1").text
    assert segments(text).count == 3
    assert text.startswith("Site 000:") and text.endswith("(Reply shortened: please call "
                                                          "for the rest.)")


def test_a_short_reply_is_one_message():
    xml = reply([Say("sms.ask_pin")], "en")
    assert xml.count("<Message>") == 1 and parse_reply(200, xml, "SM1").text == \
        "Please reply with your PIN."


@pytest.mark.parametrize("body, expected", [
    ("aide", Command("help")), ("Reçu 500001 endommagé 1", Command(
        "receive", ("500001", "endommagé", "1"))),
    ("ESTADO 1010001", Command("status", ("1010001",))),
    ("Bestand", Command("stock")), ("ヘルプ", Command("help")),
    ("在庫", Command("stock")), ("状态　１０１０００１", Command("status", ("1010001",))),
    ("１２３４５６", Command("number", ("123456",))),
])
def test_each_language_s_keywords_work_for_everyone(body, expected):
    assert parse(body) == expected


def test_translated_outcome_words_in_a_receipt():
    receipt = parse_receipt(("500001", "endommagé", "1", "FEHLT", "2"))
    assert (receipt.damaged, receipt.missing) == (("1",), ("2",))
