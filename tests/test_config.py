import pytest

from fastalloc_shm import ConfigError, GrowthStrategy, PoolConfig


def double(capacity):
    return capacity


def test_builder_builds_a_frozen_config():
    cfg = (PoolConfig.builder().capacity(1000).max_capacity(10_000).growth_strategy(GrowthStrategy.exponential(2.0))
           .alignment(64).pre_initialize(True).initializer(dict).slot_size(256).build())
    assert (cfg.capacity, cfg.max_capacity, cfg.alignment, cfg.slot_size) == (1000, 10_000, 64, 256)
    with pytest.raises(AttributeError):
        cfg.capacity = 5


def test_pre_initialize_without_an_initializer_is_accepted_as_in_the_crate():
    cfg = PoolConfig.builder().capacity(100).pre_initialize(True).build()  # the crate's builder_creates_valid_config
    assert (cfg.capacity, cfg.pre_initialize, cfg.initializer) == (100, True, None)
    assert PoolConfig.from_record(cfg.to_record()) == cfg


def test_builder_without_capacity_names_the_field():
    with pytest.raises(ConfigError, match="capacity"):
        PoolConfig.builder().slot_size(8).build()


@pytest.mark.parametrize(
    "field, kwargs",
    [
        ("capacity", {"capacity": 0}),
        ("capacity", {"capacity": True}),
        ("slot_size", {"capacity": 1, "slot_size": 0}),
        ("max_capacity", {"capacity": 10, "max_capacity": 5}),
        ("alignment", {"capacity": 1, "alignment": 48}),
        ("alignment", {"capacity": 1, "alignment": 4}),
        ("alignment", {"capacity": 1, "alignment": 8192}),
        ("lock_timeout", {"capacity": 1, "lock_timeout": 0}),
        ("lock_timeout", {"capacity": 1, "lock_timeout": float("inf")}),
        ("lock_timeout", {"capacity": 1, "lock_timeout": float("nan")}),
        ("orphan_policy", {"capacity": 1, "orphan_policy": "drop"}),
        ("pre_initialize", {"capacity": 1, "pre_initialize": 1}),
        ("initializer", {"capacity": 1, "initializer": "nosuchmodule:f"}),
        ("reset", {"capacity": 1, "reset": (dict,)}),
        ("batch_size", {"capacity": 1, "batch_size": 0}),
        ("mode", {"capacity": 1, "mode": 0o1777}),
    ],
)
def test_invalid_values_raise_config_error_naming_the_field(field, kwargs):
    with pytest.raises(ConfigError, match=f"^{field}"):
        PoolConfig(**kwargs)


def test_growth_amounts_follow_the_crate():
    assert GrowthStrategy.none().amount(100) == 0
    assert GrowthStrategy.linear(7).amount(100) == 7
    assert GrowthStrategy.exponential(2.0).amount(100) == 100
    assert GrowthStrategy.exponential(1.5).amount(3) == 1  # floor(4.5) - 3
    assert GrowthStrategy.exponential(1.01).amount(10) == 1  # at least one slot
    assert GrowthStrategy.custom(double).amount(40) == 40


def test_growth_is_clamped_to_max_capacity():
    cfg = PoolConfig(capacity=100, max_capacity=150, growth_strategy=GrowthStrategy.exponential(2.0))
    assert cfg.growth_amount(100) == 50
    assert cfg.growth_amount(150) == 0


def test_custom_growth_by_import_path():
    strategy = GrowthStrategy.custom("tests.test_config:double")
    assert strategy.amount(8) == 8
    assert GrowthStrategy.custom(double).to_record()["fn"] == "tests.test_config:double"


@pytest.mark.parametrize("bad", [lambda: GrowthStrategy.linear(0), lambda: GrowthStrategy.exponential(1.0),
                                 lambda: GrowthStrategy.custom(42)])
def test_bad_strategies_are_config_errors(bad):
    with pytest.raises(ConfigError, match="growth_strategy"):
        bad()


def test_config_round_trips_through_its_record():
    cfg = PoolConfig(capacity=10, slot_size=64, max_capacity=20, growth_strategy=GrowthStrategy.linear(5),
                     alignment=64, lock_timeout=2.5, orphan_policy="reclaim", batch_size=4)
    assert PoolConfig.from_record(cfg.to_record()) == cfg


def test_with_overrides_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="colour"):
        PoolConfig(capacity=1).with_overrides(colour="red")
