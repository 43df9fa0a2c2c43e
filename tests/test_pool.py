"""engine.physics.pool.ordered_map: input order, bounded look-ahead, errors surface."""

import pytest

from engine.physics.pool import ordered_map


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_back_in_input_order(workers):
    items = [(i, 2) for i in range(9)]
    assert list(ordered_map(pow, items, workers, ahead=1)) == [i**2 for i in range(9)]


def test_in_process_map_is_lazy():
    calls = []

    def f(x):
        calls.append(x)
        return x

    it = ordered_map(f, ((i,) for i in range(5)), workers=1)
    assert next(it) == 0 and calls == [0]


def test_an_error_in_a_worker_reaches_the_consumer():
    with pytest.raises(ZeroDivisionError):
        list(ordered_map(divmod, [(1, 1), (1, 0), (2, 1)], workers=2))
