import logging

import pytest

from m3ed.timecode import TimecodeError, TimecodeParser, format_timecode, parse_timecode


def test_plain_timecode():
    assert parse_timecode("00:01:02:05") == pytest.approx(62 + 5 / 25)
    assert parse_timecode("01:00:00:00") == 3600
    assert parse_timecode("00:00:10:12", fps=30) == pytest.approx(10.4)


def test_frame_field_at_or_above_fps_carries_into_seconds(caplog):
    parser = TimecodeParser()
    with caplog.at_level(logging.WARNING):
        assert parser("00:00:10:142", where="show/dlg_1 StartTime") == pytest.approx(10 + 142 / 25)
    assert len(parser.anomalies) == 1
    assert "show/dlg_1 StartTime" in parser.anomalies[0] and "142" in parser.anomalies[0]
    assert "show/dlg_1" in caplog.text


def test_stray_spaces_are_removed_and_reported():
    parser = TimecodeParser()
    assert parser(" 00:01: 02:03 ", where="x") == pytest.approx(62.12)
    assert any("spaces" in a for a in parser.anomalies)


def test_each_anomaly_warned_once_per_location():
    parser = TimecodeParser()
    parser("00:00:00:30", where="a")
    parser("00:00:00:31", where="b")
    assert len(parser.anomalies) == 2


def test_strict_turns_anomalies_into_errors():
    with pytest.raises(TimecodeError, match="dlg_7.*strict"):
        TimecodeParser(strict=True)("00:00:01:40", where="dlg_7")
    # A clean timecode passes in strict mode.
    assert TimecodeParser(strict=True)("00:00:01:10") == pytest.approx(1.4)


@pytest.mark.parametrize("bad", ["", "abc", "00-01-02-03", "1:2"])
def test_garbage_is_an_error_naming_the_location(bad):
    with pytest.raises(TimecodeError, match="where-it-is"):
        parse_timecode(bad, where="where-it-is")


def test_format_round_trip():
    for seconds in (0, 1.24, 62.12, 3723.96):
        assert parse_timecode(format_timecode(seconds)) == pytest.approx(seconds)
