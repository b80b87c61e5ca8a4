from chat.engine.stop import StopMatcher


def feed_all(stops, pieces):
    matcher = StopMatcher(stops)
    out = [matcher.feed(p) for p in pieces]
    out.append(matcher.flush())
    return "".join(out), out, matcher.stopped


def test_stop_string_split_across_pieces_is_never_emitted():
    text, out, stopped = feed_all(["END"], ["hello E", "N", "D and more"])
    assert text == "hello " and stopped
    assert not any("E" in piece for piece in out)


def test_false_start_is_released():
    text, _, stopped = feed_all(["END"], ["an EN", "VELOPE"])
    assert text == "an ENVELOPE" and not stopped


def test_earliest_of_several_stops_wins():
    text, _, _ = feed_all(["world", "lo"], ["hello world"])
    assert text == "hel"


def test_no_stops_passes_through():
    assert feed_all([], ["a", "b"])[0] == "ab"
