"""The optimization criteria: every validation rule, every conflict, versions and revert."""

import math

import pytest

from tests.factories import gen_model
from tests.helpers import make_user
from webapp.services import criteria
from webapp.services.errors import ServiceError


@pytest.fixture
def admin_user(app):
    return make_user("root", "admin")


def doc(**changes):
    return {**criteria.defaults(), **changes}


def test_defaults_are_version_zero(app):
    current = criteria.current()
    assert current.version == 0 and current.updated_by is None
    assert current.document["name"] == "default"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"min_accuracy_retention_percent": 101}, "min_accuracy_retention_percent"),
        ({"min_accuracy_retention_percent": -1}, "min_accuracy_retention_percent"),
        ({"max_size_reduction_percent": 100.5}, "max_size_reduction_percent"),
        ({"max_inference_time_ms": -5}, "max_inference_time_ms"),
        ({"max_optimization_time_minutes": 0}, "max_optimization_time_minutes"),
        ({"max_optimization_time_minutes": 1.5}, "max_optimization_time_minutes"),
        ({"latency_batch_size": 0}, "latency_batch_size"),
        ({"threads": "4"}, "threads"),
        ({"pruning_sparsity": math.nan}, "pruning_sparsity"),
        ({"compression_energy": math.inf}, "compression_energy"),
        ({"weight_accuracy": 0.9}, "weight_size"),
        ({"weight_accuracy": -0.1, "weight_latency": 0.9}, "weight_accuracy"),
        ({"target_deployment": "moon"}, "target_deployment"),
        ({"hardware_runtime": "tpu"}, "hardware_runtime"),
        ({"quantization_mode": "int4"}, "quantization_mode"),
        ({"enabled_techniques": ["distillation"]}, "enabled_techniques"),
        ({"enabled_techniques": []}, "enabled_techniques"),
        ({"forbidden_techniques": ["nas"]}, "forbidden_techniques"),
        ({"name": ""}, "name"),
        ({"rollback_on_violation": "sometimes"}, "rollback_on_violation"),
    ],
)
def test_each_invalid_value_is_named(app, admin_user, changes, field):
    with pytest.raises(ServiceError) as caught:
        criteria.save(doc(**changes), 0, admin_user)
    assert caught.value.status == 400
    assert field in caught.value.details


def test_weights_within_a_hundredth_of_one_pass(app, admin_user):
    saved = criteria.save(doc(weight_accuracy=0.505, weight_latency=0.3, weight_size=0.2), 0, admin_user)
    assert saved.version == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (
            {"enabled_techniques": ["quantization", "pruning"], "forbidden_techniques": ["pruning"]},
            "forbidden_techniques",
        ),
        (
            {"enabled_techniques": ["pruning"], "max_size_reduction_percent": 30.0},
            "max_size_reduction_percent",
        ),
        (
            {
                "enabled_techniques": ["quantization"],
                "quantization_mode": "fp16",
                "max_size_reduction_percent": 60.0,
            },
            "max_size_reduction_percent",
        ),
        ({"enabled_techniques": ["quantization"], "quantization_mode": "int8_static"}, "quantization_mode"),
        ({"min_accuracy_retention_percent": 100.0}, "min_accuracy_retention_percent"),
    ],
)
def test_conflicting_combinations_are_409(app, admin_user, changes, field):
    with pytest.raises(ServiceError) as caught:
        criteria.save(doc(**changes), 0, admin_user)
    assert caught.value.status == 409
    assert field in caught.value.details
    assert criteria.current().version == 0  # nothing half-written


def test_int8_static_alone_is_fine_once_a_model_has_data(app, admin_user):
    gen_model(admin_user, "calibrated", eval_data_sha256="e" * 64)
    saved = criteria.save(doc(quantization_mode="int8_static"), 0, admin_user)
    assert saved.document["quantization_mode"] == "int8_static"


def test_a_reachable_size_target_is_accepted(app, admin_user):
    saved = criteria.save(doc(max_size_reduction_percent=70.0), 0, admin_user)
    assert saved.document["max_size_reduction_percent"] == 70.0


def test_versions_keep_who_and_when_and_a_stale_save_is_refused(app, admin_user):
    first = criteria.save(doc(description="first"), 0, admin_user)
    second = criteria.save(doc(description="second"), first.version, admin_user)
    assert [v.version for v in criteria.versions()] == [2, 1]
    assert second.updated_by == "root" and second.updated_at is not None
    with pytest.raises(ServiceError) as caught:
        criteria.save(doc(description="late"), first.version, admin_user)
    assert caught.value.status == 409
    assert caught.value.details["current_version"] == 2
    assert caught.value.details["current"]["description"] == "second"
    assert criteria.current().document["description"] == "second"


def test_revert_makes_a_new_version(app, admin_user):
    criteria.save(doc(description="one"), 0, admin_user)
    criteria.save(doc(description="two"), 1, admin_user)
    reverted = criteria.revert(1, 2, admin_user)
    assert reverted.version == 3 and reverted.reverted_from == 1
    assert criteria.current().document["description"] == "one"


def test_a_save_needs_the_version_it_was_based_on(app, admin_user):
    with pytest.raises(ServiceError) as caught:
        criteria.save(doc(), None, admin_user)
    assert caught.value.status == 428


def test_diff_lists_changed_fields(app):
    changes = criteria.diff(doc(), doc(threads=4, description="x"))
    assert {c[0] for c in changes} == {"threads", "description"}


def test_sessions_freeze_the_criteria_they_start_with(app, admin_user, demo_files):
    from webapp.services import model_store, optimization

    with demo_files["onnx"].open("rb") as fh:
        model = model_store.add(admin_user, fh, "m.onnx", "m")
    session = optimization.start(admin_user, model.id, ["quantization"], {})
    criteria.save(doc(min_accuracy_retention_percent=90.0), 0, admin_user)
    assert session.criteria["min_accuracy_retention_percent"] == 99.0
    assert session.criteria["version"] == 0
    later = optimization.start(admin_user, model.id, ["quantization"], {})
    assert later.criteria["min_accuracy_retention_percent"] == 90.0
    assert later.criteria["version"] == 1


def test_bad_defaults_stop_start_up(tmp_path):
    from webapp import create_app
    from webapp.config import ConfigError

    with pytest.raises(ConfigError, match="criteria.weight_size"):
        create_app(
            {
                "app": {"instance_dir": str(tmp_path), "secret_key": "k" * 40},
                "criteria": {"weight_accuracy": 0.9},
            }
        )
