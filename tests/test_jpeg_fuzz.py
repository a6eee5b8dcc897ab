"""Structure-aware fuzzing of read_jpeg in CI: a short seeded campaign of tests/jpeg_fuzz.py over the
small files of ../shared/realfiles (when present) and Pillow-made ones, read in a worker process
so that a crash inside libjpeg fails this test instead of ending pytest. The 10-minute campaign:
`python tests/jpeg_fuzz.py --minutes 10`."""

import re

import jpeg_fuzz


def test_splitting_a_file_into_segments_loses_nothing():
    """The mutator works on segments; joined back unchanged they give the original bytes."""
    for data in jpeg_fuzz.real_seeds() + jpeg_fuzz.synthetic_seeds():
        assert jpeg_fuzz.join(jpeg_fuzz.split(data)) == data


def test_mutations_change_lengths_counts_and_order():
    seeds = jpeg_fuzz.synthetic_seeds()
    cases = [jpeg_fuzz.case_input(seeds, 0, case) for case in range(200)]
    assert sum(data not in seeds for data in cases) > 190
    assert any(data.count(b"\xff\xda") > 500 for data in cases)  # the scan limit is reached
    assert any(re.search(rb"\xff[\xe0-\xef\xfe]\x00\x02", data) for data in cases)  # an empty APPn/COM


def test_fuzzed_files_fail_only_with_our_errors(tmp_path):
    seeds = jpeg_fuzz.real_seeds(max_bytes=8000) + jpeg_fuzz.synthetic_seeds()
    figures = jpeg_fuzz.campaign(seeds, seed=0, cases=300, max_pixels=1 << 20, timeout=30, save=tmp_path)
    print(figures.as_dict())
    assert figures.findings == [], f"inputs kept in {tmp_path}"  # no crash, hang, foreign error or printing
    assert figures.temporary_files_left == 0
    assert figures.outcomes["accepted"] > 30 and figures.outcomes["InvalidJpegError"] > 30
    assert figures.outcomes["ImageTooLargeError"] > 0
