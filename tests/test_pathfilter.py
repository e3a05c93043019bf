"""Name rules of a watched root: temporary names, include/exclude globs, recursion."""

from __future__ import annotations

import re

import pytest

from syncd.config import DEFAULT_TEMP_PATTERNS, WatchRoot
from syncd.ingest.pathfilter import PathFilter, glob_regex

ROOT = "/data/inbox"


def make(
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    recursive: bool = True,
    temp: tuple[str, ...] = DEFAULT_TEMP_PATTERNS,
    root: str = ROOT,
) -> PathFilter:
    return PathFilter(
        WatchRoot(path=root, recursive=recursive, include=include, exclude=exclude), temp
    )


@pytest.mark.parametrize(
    "name",
    [
        ".clip.mp4.Ab12Cd",  # rsync's temporary name
        ".hidden.mp4",
        "clip.mp4.part",
        "clip.mp4.partial",
        "clip.mp4.tmp",
        "clip.mp4.crdownload",
        "clip.mp4.!qB",
        "~$report.mp4",
        ".clip.mp4.swp",
        "clip.swp",
    ],
)
def test_each_default_temp_pattern_rejects(name: str) -> None:
    filt = make()
    assert not filt.accepts(f"{ROOT}/{name}")
    assert not filt.accepts(f"{ROOT}/sub/{name}")
    reason = filt.reason(f"{ROOT}/{name}")
    assert reason is not None and reason.startswith("temporary name (matches ")


@pytest.mark.parametrize(
    "name",
    ["clip.mp4", "clip.partial.mp4", "part", "x.tmp.mov", "a~$b.mp4", "-rf.mp4", "a b;c'd\".mp4"],
)
def test_ordinary_names_pass(name: str) -> None:
    filt = make()
    assert filt.accepts(f"{ROOT}/{name}")
    assert filt.reason(f"{ROOT}/{name}") is None


def test_each_temp_pattern_is_needed() -> None:
    # Without any temporary patterns every one of the names above is a candidate.
    filt = make(temp=())
    for name in (".x.mp4.Ab12Cd", "a.part", "a.partial", "a.tmp", "a.crdownload", "a.!qB"):
        assert filt.accepts(f"{ROOT}/{name}")


def test_temp_patterns_are_configurable() -> None:
    filt = make(temp=("*.inprogress",))
    assert not filt.accepts(f"{ROOT}/a.mp4.inprogress")
    assert filt.accepts(f"{ROOT}/a.mp4.part")
    assert filt.accepts(f"{ROOT}/.hidden.mp4")


def test_hidden_and_temporary_folders_hide_their_files() -> None:
    filt = make()
    assert not filt.accepts(f"{ROOT}/.rsync-partial/clip.mp4")
    assert not filt.accepts_dir(f"{ROOT}/.Trash-1000")
    assert not filt.accepts_dir(f"{ROOT}/a/.cache/b")
    reason = filt.reason(f"{ROOT}/a/.cache/b/clip.mp4")
    assert reason is not None and "'.*'" in reason and "a/.cache" in reason
    assert filt.accepts_dir(f"{ROOT}/a/cache")


def test_root_inside_a_hidden_folder_is_fine() -> None:
    filt = make(root="/home/u/.media/inbox")
    assert filt.accepts("/home/u/.media/inbox/clip.mp4")


def test_outside_the_root() -> None:
    filt = make()
    assert not filt.accepts("/data/inbox2/clip.mp4")
    assert not filt.accepts("/data/clip.mp4")
    assert filt.reason("/elsewhere/clip.mp4") == "outside the root /data/inbox"
    assert not filt.accepts(ROOT)
    assert filt.accepts_dir(ROOT)
    assert filt.accepts(f"{ROOT}//sub/./clip.mp4")


def test_trailing_slash_on_the_root() -> None:
    filt = make(root="/data/inbox/")
    assert filt.accepts("/data/inbox/clip.mp4")
    assert filt.relative("/data/inbox/a/b.mp4") == "a/b.mp4"


def test_non_recursive_root_takes_only_its_own_files() -> None:
    filt = make(recursive=False)
    assert filt.accepts(f"{ROOT}/clip.mp4")
    assert not filt.accepts(f"{ROOT}/sub/clip.mp4")
    assert filt.reason(f"{ROOT}/sub/clip.mp4") == "in a sub-folder of a non-recursive root"
    assert not filt.accepts_dir(f"{ROOT}/sub")
    assert filt.accepts_dir(ROOT)


def test_exclude_by_name_at_any_depth() -> None:
    filt = make(exclude=("*.thm", "Private"))
    assert not filt.accepts(f"{ROOT}/clip.thm")
    assert not filt.accepts(f"{ROOT}/a/b/clip.thm")
    assert filt.accepts(f"{ROOT}/a/b/clip.mp4")
    # A folder that matches hides everything below it.
    assert not filt.accepts_dir(f"{ROOT}/x/Private")
    assert not filt.accepts(f"{ROOT}/x/Private/y/clip.mp4")
    assert filt.reason(f"{ROOT}/clip.thm") == "excluded by '*.thm'"
    # Case-sensitive, like the file system.
    assert filt.accepts(f"{ROOT}/clip.THM")


def test_exclude_anchored_at_the_root() -> None:
    filt = make(exclude=("Camera/raw/*", "/top.mp4"))
    assert not filt.accepts(f"{ROOT}/Camera/raw/a.mp4")
    assert filt.accepts(f"{ROOT}/Camera/a.mp4")
    assert filt.accepts(f"{ROOT}/x/Camera/raw/a.mp4")  # anchored: not at any depth
    assert not filt.accepts(f"{ROOT}/top.mp4")
    assert filt.accepts(f"{ROOT}/sub/top.mp4")
    # `Camera/raw/*` also matches the folder `Camera/raw/deeper`, which hides what is below.
    assert not filt.accepts(f"{ROOT}/Camera/raw/deeper/a.mp4")


def test_star_does_not_cross_folders() -> None:
    filt = make(include=("Camera/*.mp4",))
    assert filt.accepts(f"{ROOT}/Camera/a.mp4")
    assert not filt.accepts(f"{ROOT}/Camera/x/a.mp4")
    assert not filt.accepts(f"{ROOT}/Camera.mp4")


def test_double_star() -> None:
    filt = make(exclude=("**/raw/*.mp4", "Old/**"))
    assert not filt.accepts(f"{ROOT}/raw/a.mp4")
    assert not filt.accepts(f"{ROOT}/x/y/raw/a.mp4")
    assert filt.accepts(f"{ROOT}/x/y/raw/a.mov")
    assert not filt.accepts(f"{ROOT}/Old/a.mp4")
    assert not filt.accepts(f"{ROOT}/Old/2019/a.mp4")
    assert not filt.accepts_dir(f"{ROOT}/Old/2019")
    assert filt.accepts(f"{ROOT}/Older/a.mp4")


def test_folder_only_pattern() -> None:
    filt = make(exclude=("tmp/",))
    assert filt.accepts(f"{ROOT}/tmp")  # a file named tmp
    assert not filt.accepts_dir(f"{ROOT}/a/tmp")
    assert not filt.accepts(f"{ROOT}/a/tmp/clip.mp4")


def test_include_only_what_matches() -> None:
    filt = make(include=("*.mp4", "*.[mM][oO][vV]"))
    assert filt.accepts(f"{ROOT}/a.mp4")
    assert filt.accepts(f"{ROOT}/x/y/a.mp4")
    assert filt.accepts(f"{ROOT}/a.MOV")
    assert not filt.accepts(f"{ROOT}/a.jpg")
    assert (
        filt.reason(f"{ROOT}/a.jpg")
        == "not matched by any include glob ('*.mp4', '*.[mM][oO][vV]')"
    )
    # Folders are never pruned by include globs: a match may lie below.
    assert filt.accepts_dir(f"{ROOT}/photos")


def test_include_a_folder_takes_everything_below_it() -> None:
    filt = make(include=("Camera/**", "Keep/"))
    assert filt.accepts(f"{ROOT}/Camera/a.jpg")
    assert filt.accepts(f"{ROOT}/Camera/2024/a.jpg")
    assert not filt.accepts(f"{ROOT}/Other/a.jpg")
    assert filt.accepts(f"{ROOT}/x/Keep/y/a.jpg")


def test_exclude_beats_include_and_temp_beats_both() -> None:
    filt = make(include=("*.mp4",), exclude=("skip-*",))
    assert not filt.accepts(f"{ROOT}/skip-a.mp4")
    assert not filt.accepts(f"{ROOT}/a.mp4.part")
    assert filt.accepts(f"{ROOT}/a.mp4")


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("a?c", "abc", True),
        ("a?c", "a/c", False),
        ("[!a]*", "bcd", True),
        ("[!a]*", "abc", False),
        ("[a-c]x", "bx", True),
        ("[a-c]x", "dx", False),
        ("[]]x", "]x", True),
        ("[z-a]x", "ax", False),  # an inverted range matches nothing
        ("[ab", "[ab", True),  # no closing bracket: literal
        ("a.b", "axb", False),  # dots are literal
        ("*(1)*", "clip(1).mp4", True),
        ("[&~|]", "~", True),
    ],
)
def test_glob_translation(pattern: str, name: str, matches: bool) -> None:
    assert bool(re.fullmatch(glob_regex(pattern), name)) is matches


def test_names_with_odd_characters() -> None:
    filt = make(exclude=("*\nx",))
    assert not filt.accepts(f"{ROOT}/a\nx")
    assert filt.accepts(f"{ROOT}/a\ny.mp4")
    undecodable = "bad-\udcff.mp4"  # what os.fsdecode gives for a non-UTF-8 byte
    assert filt.accepts(f"{ROOT}/{undecodable}")


def test_sidecar_files_are_never_candidates_even_when_included() -> None:
    filt = make(include=("*.json", "*.mp4"))
    assert filt.reason(f"{ROOT}/clip.mp4.mavi.json") == "a sidecar file syncd writes (*.mavi.json)"
    assert not filt.accepts(f"{ROOT}/sub/x.mavi.json")
    assert filt.accepts(f"{ROOT}/clip.mp4")
    assert filt.accepts(f"{ROOT}/clip.mavi.json.mp4")
    # The temporary name a sidecar is written under is a dot name.
    assert not make().accepts(f"{ROOT}/.clip.mp4.mavi.json.syncd-tmp")


@pytest.mark.parametrize(
    ("include", "exclude"),
    [((), ()), (("*.jpg",), ()), ((), ("*.mp4",)), (("keep/",), ("b*",))],
)
@pytest.mark.parametrize("included", [True, False])
def test_a_folder_of_names_is_accepted_exactly_when_each_file_is(
    include: tuple[str, ...], exclude: tuple[str, ...], included: bool
) -> None:
    # The scanner's one-pass check must agree with file_verdict, name by name.
    root = WatchRoot(path="/media", include=include, exclude=exclude)
    filt = PathFilter(root, DEFAULT_TEMP_PATTERNS)
    names = ["a.jpg", "b.mp4", ".hidden.jpg", "c.jpg.part", "d.jpg.mavi.json", "~$e.jpg", "f\ng"]
    for prefix in ("", "keep/"):
        for name in names:
            one = filt.file_verdict(prefix + name, name, included) is None
            assert filt.all_files_accepted(prefix, [name], included) is one, (prefix, name)
        every = all(filt.file_verdict(prefix + n, n, included) is None for n in names)
        assert filt.all_files_accepted(prefix, names, included) is every
    assert filt.all_files_accepted("", [], included)
