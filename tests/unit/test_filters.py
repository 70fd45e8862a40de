"""containerd's filter language: parsing, matching and error messages (vectors from pkg/filters)."""

from __future__ import annotations

import pickle

import pytest

from corral.kernel._errors import InvalidArgument
from corral.kernel._filters import (
    ALWAYS,
    All,
    Any,
    FilterSyntaxError,
    Operator,
    Selector,
    adapt_mapping,
    parse_filter,
    parse_filters,
    quote_value,
)

FOO = adapt_mapping({"name": "foo", "labels": {"foo": "true"}})
BAR = adapt_mapping({"name": "bar", "labels": {"bar": "true"}})
NAMELESS = adapt_mapping({"labels": {}})


def only(text: str) -> Selector:
    """The single selector a one-selector filter parses to."""
    parsed = parse_filter(text)
    assert isinstance(parsed, All)
    (selector,) = parsed.filters
    assert isinstance(selector, Selector)
    return selector


def error_of(text: str) -> str:
    with pytest.raises(FilterSyntaxError) as caught:
        parse_filter(text)
    return str(caught.value)


# --- matching --------------------------------------------------------------------------------


def test_empty_filter_matches_everything() -> None:
    assert parse_filter("") is ALWAYS
    assert parse_filter("").match(NAMELESS)


def test_no_filters_or_one_empty_filter_match_everything() -> None:
    assert parse_filters([]).match(NAMELESS)
    assert parse_filters([""]).match(NAMELESS)
    assert parse_filters(["name==nope", ""]).match(NAMELESS)


def test_presence_selector_needs_the_field() -> None:
    assert only("labels.a") == Selector(("labels", "a"), Operator.PRESENT, "")
    assert parse_filter("labels.foo").match(FOO)
    assert not parse_filter("labels.foo").match(BAR)
    assert not parse_filter("name").match(NAMELESS)


def test_equal_needs_present_and_equal_field() -> None:
    assert parse_filter("name==foo").match(FOO)
    assert not parse_filter("name==foo").match(BAR)
    assert not parse_filter('name==""').match(NAMELESS)
    assert parse_filter('name==""').match(adapt_mapping({"name": ""}))


def test_not_equal_matches_other_values() -> None:
    assert only("name!=foo") == Selector(("name",), Operator.NOT_EQUAL, "foo")
    assert parse_filter("name!=foo").match(BAR)
    assert not parse_filter("name!=foo").match(FOO)


def test_not_equal_matches_absent_field() -> None:
    assert parse_filter("name!=foo").match(NAMELESS)
    # An absent field reads as "", so it equals the empty string.
    assert not parse_filter('name!=""').match(NAMELESS)


def test_regex_search_is_unanchored() -> None:
    assert parse_filter("name~=oo").match(FOO)
    assert parse_filter("name~=^f").match(FOO)
    assert not parse_filter("name~=^f").match(BAR)


def test_regex_tests_absent_field_as_empty_string() -> None:
    assert parse_filter("name~=^$").match(NAMELESS)
    assert not parse_filter("name~=/./").match(NAMELESS)


def test_regex_compile_failure_matches_nothing() -> None:
    for text in ("name~=[", "name~=/(/", "name~=a{1,2"):
        assert not parse_filter(text).match(FOO)
        assert not parse_filter(text).match(NAMELESS)


def test_regex_garbage_is_valid_syntax() -> None:
    assert only('other~=/[abc]{0,1}"\\//').value == '[abc]{0,1}"/'


def test_comma_requires_every_selector() -> None:
    assert parse_filter("name==bar,labels.bar").match(BAR)
    assert not parse_filter("name==bar,labels.foo").match(BAR)
    snapshot = adapt_mapping({"type": "io.containerd.snapshotter.v1", "id": "overlayfs"})
    assert parse_filter("type==io.containerd.snapshotter.v1,id~=^over").match(snapshot)
    assert parse_filter("id~=^over").match(snapshot)
    assert not parse_filter("type==io.containerd.snapshotter.v1,id~=^native").match(snapshot)


def test_several_filters_match_when_any_does() -> None:
    either = parse_filters(["name==foo", "name==bar"])
    assert isinstance(either, Any)
    assert either.match(FOO)
    assert either.match(BAR)
    assert not either.match(NAMELESS)


def test_parse_filters_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        parse_filters("name==foo")


# --- values and quoting ----------------------------------------------------------------------


def test_unquoted_value_may_hold_dots_dashes_and_underscores() -> None:
    selector = only("labels.foo==omg_asdf.asdf-qwer")
    assert selector == Selector(("labels", "foo"), Operator.EQUAL, "omg_asdf.asdf-qwer")
    assert parse_filter("labels.foo==omg_asdf.asdf-qwer").match(
        adapt_mapping({"labels": {"foo": "omg_asdf.asdf-qwer"}})
    )


def test_unquoted_value_may_hold_slashes_colons_and_backslashes() -> None:
    assert only("image==docker.io/library/busybox:latest").value == "docker.io/library/busybox:latest"
    assert only("name~=[abc]\\+").value == "[abc]\\+"
    assert only("name==a=b!c~d").value == "a=b!c~d"


def test_single_quotes_are_ordinary_value_characters() -> None:
    assert only("name=='foo'").value == "'foo'"


def test_double_quoted_value_may_hold_comma_and_space() -> None:
    assert only('other=="too complex, yo"').value == "too complex, yo"
    assert only('name=="bar"').value == "bar"


def test_regex_value_may_be_slash_or_pipe_quoted() -> None:
    assert only("other~=/[abc]{1,2}/") == Selector(("other",), Operator.MATCHES, "[abc]{1,2}")
    assert only("input~=|foo/bar|").value == "foo/bar"
    assert only("input~=/foo\\/bar/").value == "foo/bar"
    assert only("input~=|a\\|b|").value == "a|b"
    assert only("name~=|牛|").value == "牛"


def test_regex_quoted_value_keeps_the_comma_inside() -> None:
    parsed = parse_filter("other~=/[abc]{1,2}/,name!=foo")
    assert isinstance(parsed, All)
    assert len(parsed.filters) == 2
    assert parsed.match(adapt_mapping({"name": "bazo", "other": "abc"}))


def test_quoted_field_may_hold_escaped_backslash_and_quote() -> None:
    selector = only('labels."more complex label with \\\\ and \\""==present')
    assert selector.fieldpath == ("labels", 'more complex label with \\ and "')
    assert selector.value == "present"


def test_quoted_field_may_lead_or_be_followed_by_more_fields() -> None:
    assert only('"leading quote".postquote==value').fieldpath == ("leading quote", "postquote")
    assert only('labels."a b".post').fieldpath == ("labels", "a b", "post")


def test_fields_may_start_with_digits_or_underscores() -> None:
    assert only("_a.9b==x").fieldpath == ("_a", "9b")


def test_whitespace_is_skipped_before_fields_operators_and_values() -> None:
    assert only("name == bar") == Selector(("name",), Operator.EQUAL, "bar")
    assert only("labels. foo").fieldpath == ("labels", "foo")
    parsed = parse_filter("name==foo, labels.foo")
    assert isinstance(parsed, All)
    assert parsed.filters[1] == Selector(("labels", "foo"))


def test_go_escapes_decode() -> None:
    assert only('name=="\\a\\b\\f\\n\\r\\t\\v\\\\\\""').value == '\a\b\f\n\r\t\v\\"'
    assert only('name=="\\101\\x41\\u00e9\\U0001F600"').value == "AAé\U0001f600"


def test_byte_escapes_build_utf8_and_keep_stray_bytes() -> None:
    assert only('name=="\\xc3\\xa9"').value == "é"
    assert only('name=="\\303\\251"').value == "é"
    assert only('name=="\\xff"').value == "\udcff"


def test_surrogate_unicode_escape_becomes_replacement_character() -> None:
    assert only('name=="\\ud800"').value == "\ufffd"


def test_overflowing_unicode_escape_keeps_its_low_byte_like_go() -> None:
    assert only('name=="\\Uffffff41"').value == "A"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "plain",
        "a b, c",
        'x"y',
        "back\\slash",
        "\n\t\a\x00\x7f",
        "é牛\U0001f600",
        "\u200b\U000e0001",
        "\udcff",
    ],
)
def test_quote_value_round_trips(value: str) -> None:
    assert only(f"name=={quote_value(value)}").value == value
    assert only(f"name~={quote_value(value)}").value == value


def test_quote_value_follows_go_strconv_quote() -> None:
    assert quote_value('a"\\\n\x01\u200b\U000e0001é') == '"a\\"\\\\\\n\\x01\\u200b\\U000e0001é"'


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("name==foo,", "name==foo,", "expected field or quoted"),
        ("labels.", "labels.", "expected field or quoted"),
        (" ", " ", "expected field or quoted"),
        (",name", " >|,|< name", "expected field or quoted"),
        ("==foo", " >|=|< =foo", "expected field or quoted"),
        ('labels.?"x".post==present', 'labels. >|?|< "x".post==present', "expected field or quoted"),
        ("image~=,id?=?fbaq", "image~= >|,|< id?=?fbaq", "expected value or quoted"),
        ("name==", "name==", "expected value or quoted"),
        ("labels.ns/key==value", "labels.ns >|/|< key==value", "quoted literal not terminated"),
        ("labels.key==/value", "labels.key== >|/|< value", "quoted literal not terminated"),
        ('name=="foo', 'name== >|"|< foo', "quoted literal not terminated"),
        ('labels."a\nb"', 'labels. >|"|< a\nb"', "quoted literal not terminated"),
        ("labels.|foo|==omg", "labels. >|||< foo|==omg", "invalid quote encountered"),
        ("labels./foo/", "labels. >|/|< foo/", "invalid quote encountered"),
        ("name==/foo/", "name== >|/|< foo/", "invalid quote encountered"),
        ("name==|foo|", "name== >|||< foo|", "invalid quote encountered"),
        ('name=="\\d"', 'name== >|"|< \\d"', "illegal escape sequence"),
        ('name=="\\/"', 'name== >|"|< \\/"', "illegal escape sequence"),
        ('labels."\\xaz"', 'labels. >|"|< \\xaz"', "illegal numeric escape sequence"),
        ('name=="\\400"', 'name== >|"|< \\400"', "unquoting failed: quote syntax error"),
        ('name=="\\U00110000"', 'name== >|"|< \\U00110000"', "unquoting failed: quote syntax error"),
        ("name===foo", "name >|=|< ==foo", 'unsupported operator "==="'),
        ("name=foo", "name >|=|< foo", 'unsupported operator "="'),
        ("name foo", "name  >|f|< oo", 'expected an operator ("=="|"!="|"~=")'),
        ('name"x"', 'name >|"|< x"', 'expected an operator ("=="|"!="|"~=")'),
        ("labels.a ,b", "labels.a  >|,|< b", 'expected an operator ("=="|"!="|"~=")'),
        ("name==foo ", "name==foo >| |< ", "unexpected input:  "),
        ("name==foo ,a", "name==foo >| |< ,a", "unexpected input:  "),
        ('name=="bar"x', 'name=="bar" >|x|< ', "unexpected input: x"),
        ("name\x00", "name >|\x00|< ", "unexpected null"),
        ('name=="a\x00"', 'name== >|"|< a\x00"', "unexpected null"),
    ],
)
def test_syntax_errors_mark_the_position_like_containerd(text: str, where: str, reason: str) -> None:
    assert error_of(text) == f"filters: parse error: [{where}]: {reason}: invalid argument"


def test_syntax_error_is_an_invalid_argument_with_details() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_filters(["name==foo", "image~=,id?=?fbaq"])
    error = caught.value
    assert isinstance(error, FilterSyntaxError)
    assert (error.text, error.position, error.reason) == ("image~=,id?=?fbaq", 7, "expected value or quoted")
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


# --- adapt_mapping ---------------------------------------------------------------------------


def test_adapt_mapping_walks_nested_mappings() -> None:
    source = adapt_mapping({"type": "x", "labels": {"a": "b"}, "spec": {"inner": {"deep": "v"}}})
    assert source(["type"]) == "x"
    assert source(["labels", "a"]) == "b"
    assert source(["spec", "inner", "deep"]) == "v"


def test_adapt_mapping_reads_missing_and_non_string_fields_as_absent() -> None:
    source = adapt_mapping({"type": "x", "size": 3, "labels": {"a": "b"}})
    assert source(["nope"]) is None
    assert source(["size"]) is None
    assert source(["labels"]) is None
    assert source(["labels", "z"]) is None
    assert source(["type", "deeper"]) is None


def test_adapt_mapping_reads_dotted_label_keys_from_the_rest_of_the_path() -> None:
    source = adapt_mapping({"labels": {"containerd.io/gc.root": "yes", "a.b": "c"}})
    assert source(["labels", "a", "b"]) == "c"
    assert parse_filter('labels."containerd.io/gc.root"==yes').match(source)
    assert parse_filter("labels.a.b==c").match(source)
