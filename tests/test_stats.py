from fastalloc_shm import PoolStatistics


def test_rates_and_available():
    s = PoolStatistics(capacity=200, current_usage=50, peak_usage=150, total_allocations=90, allocation_failures=10)
    assert s.utilization_rate() == 25.0
    assert s.peak_utilization_rate() == 75.0
    assert s.hit_rate() == 0.9
    assert s.available() == 150


def test_hit_rate_is_one_without_attempts():
    assert PoolStatistics(capacity=1).hit_rate() == 1.0


def test_str_is_a_readable_report():
    text = str(PoolStatistics(capacity=10_000, current_usage=2500))
    assert "capacity" in text and "10,000" in text and "25.0%" in text
