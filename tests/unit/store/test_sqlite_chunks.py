from hypothesis import given
from hypothesis import strategies as st

from hopper.store.sqlite import chunk_sizes


@given(st.integers(min_value=0, max_value=20_000), st.sampled_from([1, 4, 76, 1024, 5000]))
def test_chunk_sizes_cover_the_rows_with_fixed_sizes(rows: int, max_size: int) -> None:
    sizes = chunk_sizes(rows, max_size)
    assert sum(sizes) == rows
    assert all(size <= max_size for size in sizes)
    assert set(sizes) <= {1024, 256, 64, 16, 4, 1}
    assert sizes == sorted(sizes, reverse=True)


def test_a_typical_commit_needs_few_statements() -> None:
    assert chunk_sizes(5_000) == [1024] * 4 + [256] * 3 + [64] * 2 + [4] * 2
