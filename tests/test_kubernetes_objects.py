"""Every Kubernetes object the program creates is accepted by the real schemas: built-in kinds by
kubernetes-validate for the pinned Kubernetes version, custom resources by their CRD schemas."""

import pytest

from mock_engine import STACKS
from support.schemas import (
    CRDS_WITHOUT_SHARED_SCHEMA,
    crd_schema_path,
    validate_custom_resource,
    validate_kubernetes_object,
)


@pytest.mark.parametrize("stack", STACKS)
def test_every_kubernetes_object_is_valid(stack_runs, stack):
    built_in = custom = 0
    for registration in stack_runs[stack].where(lambda r: r.type.startswith("kubernetes:")
                                                and r.type != "kubernetes:helm.sh/v3:Release"):
        schema = crd_schema_path(registration)
        if schema is None:
            validate_kubernetes_object(registration)
            built_in += 1
        elif registration.type.split(":")[1].split("/")[0] in CRDS_WITHOUT_SHARED_SCHEMA:
            continue
        else:
            assert schema.exists(), f"no CRD schema for {registration.type}"
            validate_custom_resource(registration)
            custom += 1
    assert built_in >= 40
    assert custom >= (2 if stack == "local" else 4)


def test_a_misspelled_custom_resource_field_is_refused(prod):
    import copy

    from jsonschema import ValidationError

    cluster = prod.one("kubernetes:postgresql.cnpg.io/v1:Cluster")
    broken = copy.deepcopy(cluster)
    broken.inputs["spec"]["instancez"] = broken.inputs["spec"].pop("instances")
    with pytest.raises(ValidationError):
        validate_custom_resource(broken)


@pytest.mark.parametrize("stack", STACKS)
def test_every_helm_release_has_a_fixed_name_a_pinned_version_and_rolls_back(stack_runs, stack):
    releases = stack_runs[stack].of_type("kubernetes:helm.sh/v3:Release")
    assert releases
    for release in releases:
        values = release.values
        assert values["name"] and values["version"][0].isdigit() or values["version"].startswith("v"), release.name
        assert values["cleanupOnFail"] is True and values["maxHistory"] >= 1, release.name
        # The Airflow release waits for its jobs instead of rolling back (a failed migration must be read).
        assert values.get("atomic") is True or values.get("waitForJobs") is True, release.name
