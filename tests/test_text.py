"""Tests for loa.text: encodings, units, part packing, unaccent."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loa.text import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    SmsInfo,
    is_gsm7,
    measure,
    nfc,
    split_parts,
    unaccent,
)

# A real 353-character campaign text (checked in test_bluezone_length).
BLUEZONE = (
    "Bộ Y tế và Bộ Thông tin và Truyền thông khuyến cáo: Hãy cài đặt ứng dụng Bluezone "
    "trên điện thoại di động để bảo vệ mình, bảo vệ gia đình và cộng đồng khỏi COVID-19. "
    "Bluezone giúp phát hiện những người đã tiếp xúc gần với người nhiễm bệnh, không thu thập "
    "vị trí và bảo đảm an toàn thông tin cá nhân. Cài đặt tại https://www.bluezone.gov.vn ngay hôm nay."
)

VIETNAMESE_LOWER = (
    "aàáảãạăằắẳẵặâầấẩẫậbcdđeèéẻẽẹêềếểễệghiìíỉĩịklmnoòóỏõọôồốổỗộơờớởỡợ"
    "pqrstuùúủũụưừứửữựvxyỳýỷỹỵ"
)
VIETNAMESE = VIETNAMESE_LOWER + VIETNAMESE_LOWER.upper()
GSM_VIETNAMESE = set("aàeèéiìoòuùÉ") | set("abcdeghiklmnopqrstuvxy") | set("ABCDEGHIKLMNOPQRSTUVXY")


def test_nfc() -> None:
    assert nfc(unicodedata.normalize("NFD", "Việt Nam")) == "Việt Nam"


@pytest.mark.parametrize("text, sent", [
    ("Mã \ud800 ở đây", "Mã \ufffd ở đây"),              # a lone high surrogate
    ("x\udcff", "x\ufffd"),                               # surrogateescape's form of a bad byte
    ("\ude00\ud83d", "\ufffd\ufffd"),                     # the halves of a pair, the wrong way round
    ("ok \ud83d\ude00", "ok 😀"),                          # a pair split in two is the character
])
def test_lone_surrogates_are_sent_as_the_replacement_character(text: str, sent: str) -> None:
    assert nfc(text) == sent
    sent.encode("utf-16-be")                                # every gateway can encode it
    assert measure(text) == measure(sent) and split_parts(text) == [sent]


# --- encoding per letter -----------------------------------------------------


@pytest.mark.parametrize("letter", sorted(set(VIETNAMESE)))
def test_vietnamese_letter_encoding(letter: str) -> None:
    expected = "GSM-7" if letter in GSM_VIETNAMESE else "UCS-2"
    assert measure(letter).encoding == expected
    # Decomposed input must classify the same as precomposed.
    assert measure(unicodedata.normalize("NFD", letter)).encoding == expected


def test_the_gsm7_vietnamese_letters() -> None:
    accented_in_gsm = {ch for ch in VIETNAMESE if not ch.isascii() and ch in GSM7_BASIC}
    assert accented_in_gsm == set("àèéìòùÉ")
    for ch in "ăâđêôơưĂÂĐÊÔƠƯáảãạ":
        assert not is_gsm7(ch)


@pytest.mark.parametrize("ch", list("^{}\\[~]|€\f"))
def test_extension_chars_count_two(ch: str) -> None:
    assert ch in GSM7_EXTENSION
    assert measure(ch) == SmsInfo("GSM-7", 2, 1)
    assert measure("a" + ch + "b").units == 4


def test_escape_char_itself_is_not_gsm7() -> None:
    assert measure("\x1b").encoding == "UCS-2"


def test_empty_text_is_one_part() -> None:
    assert measure("") == SmsInfo("GSM-7", 0, 1)
    assert split_parts("") == [""]


def test_emoji_counts_two_utf16_units() -> None:
    assert measure("😀") == SmsInfo("UCS-2", 2, 1)


# --- boundaries --------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "parts"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_boundaries(n: int, parts: int) -> None:
    assert measure("a" * n) == SmsInfo("GSM-7", n, parts)
    assert len(split_parts("a" * n)) == parts


@pytest.mark.parametrize(
    ("n", "parts"),
    [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_boundaries(n: int, parts: int) -> None:
    assert measure("ệ" * n) == SmsInfo("UCS-2", n, parts)
    assert len(split_parts("ệ" * n)) == parts


def test_single_part_may_hold_escapes_up_to_160() -> None:
    assert measure("a" * 158 + "€") == SmsInfo("GSM-7", 160, 1)
    assert measure("a" * 159 + "€") == SmsInfo("GSM-7", 161, 2)


def test_escape_sequence_not_split_at_part_boundary() -> None:
    # 152 septets, then "€" (2) would straddle the 153-septet boundary.
    text = "a" * 152 + "€" + "b" * 10
    parts = split_parts(text)
    assert parts == ["a" * 152, "€" + "b" * 10]
    assert measure(text) == SmsInfo("GSM-7", 164, 2)


def test_escapes_can_need_more_parts_than_units_suggest() -> None:
    # 306 septets fit ceil(306/153) = 2 parts only if split mid-escape.
    text = "a" * 152 + "€" * 77
    info = measure(text)
    assert info.units == 306
    assert info.parts == 3 == len(split_parts(text))
    assert all(_septets(p) <= 153 for p in split_parts(text))


def test_surrogate_pair_not_split_at_part_boundary() -> None:
    text = "ệ" * 66 + "😀" + "ệ" * 5
    parts = split_parts(text)
    assert parts == ["ệ" * 66, "😀" + "ệ" * 5]
    assert measure(text) == SmsInfo("UCS-2", 73, 2)


def test_single_ucs2_part_holds_surrogates_up_to_70() -> None:
    assert measure("ệ" * 68 + "😀") == SmsInfo("UCS-2", 70, 1)
    assert measure("ệ" * 69 + "😀").parts == 2


# --- a real message ----------------------------------------------------------


def test_bluezone_length() -> None:
    assert len(BLUEZONE) == 353


def test_bluezone_with_diacritics_is_six_ucs2_parts() -> None:
    assert measure(BLUEZONE) == SmsInfo("UCS-2", 353, 6)


def test_bluezone_unaccented_is_three_gsm7_parts() -> None:
    plain = unaccent(BLUEZONE)
    assert plain.startswith("Bo Y te va Bo Thong tin va Truyen thong khuyen cao: Hay cai dat ung dung")
    assert measure(plain) == SmsInfo("GSM-7", 353, 3)
    assert [len(p) for p in split_parts(plain)] == [153, 153, 47]


def test_nfd_input_gives_same_results() -> None:
    nfd = unicodedata.normalize("NFD", BLUEZONE)
    assert nfd != BLUEZONE
    assert measure(nfd) == measure(BLUEZONE)
    assert split_parts(nfd) == split_parts(BLUEZONE)
    assert unaccent(nfd) == unaccent(BLUEZONE)


# --- unaccent ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("Đà Nẵng", "Da Nang"),
        ("đồng", "dong"),
        ("Thành phố Hồ Chí Minh", "Thanh pho Ho Chi Minh"),
        ("“Xin chào” – ‘bạn’…", "\"Xin chao\" - 'ban'..."),
        ("dòng 1\ndòng 2\r\n", "dong 1\ndong 2\r\n"),
        ("giá 10€ {ưu đãi}", "gia 10€ {uu dai}"),
        ("a\tb`c", "a b'c"),
        ("là lá", "la la"),
    ],
)
def test_unaccent_examples(src: str, expected: str) -> None:
    assert unaccent(src) == expected


def test_unaccent_output_is_gsm7_for_odd_symbols() -> None:
    for src in ("😀 ok", "ʻokina", "\x00\x07bell", "\u00a0nbsp", "中文", "\x1b"):
        assert is_gsm7(unaccent(src))


_SAMPLE_ALPHABET = VIETNAMESE + "".join(chr(c) for c in range(0x20, 0x7F)) + "\n\r\t"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_SAMPLE_ALPHABET, max_size=400))
def test_unaccent_is_always_gsm7(text: str) -> None:
    out = unaccent(text)
    assert is_gsm7(out)
    assert measure(out).encoding == "GSM-7"
    assert out.count("\n") == text.count("\n")


# --- split_parts / measure consistency ---------------------------------------

_MIXED = st.lists(
    st.sampled_from(list("aé€[^ ệđ😀\n") + ["👍🏽", "e\u0301", "\U0001f1fb\U0001f1f3"])
    | st.characters(),
    max_size=500,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(_MIXED)
def test_split_parts_reconstructs_and_matches_measure(text: str) -> None:
    parts = split_parts(text)
    info = measure(text)
    assert "".join(parts) == nfc(text)
    assert sum(len(p) for p in parts) == len(nfc(text))
    assert info.parts == len(parts)
    assert sum(_units(p, info.encoding) for p in parts) == info.units
    if info.parts > 1:
        limit = 153 if info.encoding == "GSM-7" else 67
        assert all(0 < _units(p, info.encoding) <= limit for p in parts)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab€[ ")), min_size=150, max_size=480))
def test_gsm_packing_near_boundaries(text: str) -> None:
    parts = split_parts(text)
    assert measure(text).parts == len(parts)
    assert "".join(parts) == text
    if len(parts) > 1:
        assert all(_septets(p) <= 153 for p in parts)
        # Greedy: each part but the last is full or full minus a carried escape.
        assert all(_septets(p) >= 152 for p in parts[:-1])


def _septets(part: str) -> int:
    return sum(2 if ch in GSM7_EXTENSION else 1 for ch in part)


def _units(part: str, encoding: str) -> int:
    if encoding == "GSM-7":
        return _septets(part)
    return len(part.encode("utf-16-le", "surrogatepass")) // 2   # a lone surrogate is one unit too
