"""How the MPC modules depend on each other: the engine drives the trainer, never the reverse."""

import grimp
import pytest

from privkeras.backends.mpc import engine, trainer

ENGINE = "privkeras.backends.mpc.engine"
TRAINER = "privkeras.backends.mpc.trainer"


@pytest.fixture(scope="module")
def graph():
    # Imports under TYPE_CHECKING and inside functions count: a cycle is a cycle.
    return grimp.build_graph("privkeras", cache_dir=None)


def test_the_trainer_imports_no_engine_module(graph):
    assert graph.find_shortest_chain(importer=TRAINER, imported=ENGINE) is None
    assert graph.direct_import_exists(importer=ENGINE, imported=TRAINER)


def test_the_engine_provides_what_the_trainer_asks_for():
    from privkeras.backends.mpc import roles

    members = {
        name
        for name in (*trainer.TrainingEngine.__annotations__, *vars(trainer.TrainingEngine))
        if not name.startswith("_")
    }
    assert members == {
        "name",
        "policy",
        "runtime",
        "lower",
        "validated_inputs",
        "session",
        "describe_workers",
    }
    for name in members:
        assert hasattr(engine.MPCTorchEngine, name) or name in {"policy"}, name
    assert (engine.MODEL_OWNER, engine.CALLER) == (roles.MODEL_OWNER, roles.CALLER)
