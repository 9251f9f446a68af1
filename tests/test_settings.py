"""Bad stack settings stop the program before it registers anything, naming the key."""

import datetime
import re

import pytest
import yaml

from components.config import Settings, SettingsError, load_settings, pulumi_yaml_config, settings_reference_markdown
from mock_engine import REPO, ProgramFailed, run_program


def failure(stack: str, **overrides) -> ProgramFailed:
    with pytest.raises(ProgramFailed) as caught:
        run_program(stack, overrides=overrides)
    assert isinstance(caught.value.cause, SettingsError), caught.value.cause
    assert caught.value.registrations == [], "nothing may be registered before the settings are valid"
    return caught.value


def test_a_typo_names_the_key_and_suggests_the_right_one():
    message = str(failure("prod", workerNodeMaxx=12))
    assert "airflow:workerNodeMaxx: unknown setting; did you mean 'airflow:workerNodeMax'?" in message


def test_an_unknown_key_without_a_near_match_is_refused_too():
    assert "airflow:colour: unknown setting" in str(failure("local", colour="blue"))


def test_a_wrong_type_names_the_key_and_what_is_allowed():
    message = str(failure("prod", workerNodeMax="lots"))
    assert "airflow:workerNodeMax: Input should be a valid integer" in message
    assert "'lots'" in message
    assert "Maximum size of the worker node group" in message


def test_an_out_of_range_value_names_the_key_and_the_bound():
    message = str(failure("prod", availabilityZoneCount=1))
    assert "airflow:availabilityZoneCount: Input should be greater than or equal to 2" in message


def test_a_value_outside_an_enumeration_lists_the_choices():
    message = str(failure("prod", natGateways="none"))
    assert "airflow:natGateways: Input should be 'perAz' or 'single'" in message


def test_a_bad_list_element_names_its_position():
    message = str(failure("prod", endpointPublicAccessCidrs=["0.0.0.0/0", "not-a-cidr"]))
    assert "airflow:endpointPublicAccessCidrs[1]:" in message


def test_a_missing_required_value_is_named():
    message = str(failure("prod", region=None))
    assert "airflow:region: is required when target is 'aws'" in message


def test_inconsistent_sizes_are_refused():
    message = str(failure("prod", workerNodeDesired=50))
    assert "airflow:workerNodeDesired: must lie between workerNodeMin (3) and workerNodeMax (30), got 50" in message


def test_more_workers_than_the_node_pool_limits_hold_are_refused_naming_both_keys():
    """prod: workers of 2 vCPUs and 8Gi; after Karpenter's VM overhead, kube-reserved and the DaemonSets a
    2xlarge holds 3 and a 4xlarge 6, so 64 vCPUs / 256 GiB hold 24 — not 25, though 25 workers' requests (50
    vCPUs, 200 GiB) are well within the limits."""
    from components.cluster.capacity_model import WorkerShape, workers_per_node

    two_cpus = WorkerShape(cpu="2", memory="8Gi", max_replicas=25, git_sync=False)
    assert [workers_per_node(two_cpus, "m6i", size) for size in ("xlarge", "2xlarge", "4xlarge")] == [1, 3, 6]
    message = str(failure("prod", workerMaxReplicas=25))
    assert ("airflow:workerMaxReplicas: 25 workers of 2 vCPU and 8Gi may not fit the worker NodePool: "
            "karpenterCpuLimit / karpenterMemoryLimitGib (64 vCPUs, 256 GiB) hold 24 on m7i.2xlarge nodes") in message
    # Karpenter may fill the limits with the allowed type that packs the fewest (an xlarge holds one such worker).
    assert "hold 16 on m7i.xlarge nodes" in str(failure("prod", workerMaxReplicas=24,
                                                        karpenterInstanceSizes=["xlarge", "2xlarge", "4xlarge"]))
    # A git-sync sidecar in every worker counts: 500m workers, 7 to an xlarge alone, 6 with it.
    half = WorkerShape(cpu="500m", memory="1Gi", max_replicas=24, git_sync=False)
    synced = WorkerShape(cpu="500m", memory="1Gi", max_replicas=24, git_sync=True)
    assert (workers_per_node(half, "m6i", "xlarge"), workers_per_node(synced, "m6i", "xlarge")) == (7, 6)
    assert "workerMaxReplicas" not in str(failure("prod", workerMaxReplicas=24, workerNodeDesired=50))
    assert "workerMaxReplicas" not in str(failure("prod", workerMaxReplicas=32, karpenterCpuLimit=96,
                                                  karpenterMemoryLimitGib=384, workerNodeDesired=50))
    # A worker that fits no allowed type at all.
    assert "airflow:workerCpu: a worker of workerCpu 20" in str(failure("prod", workerCpu="20"))
    # Without Karpenter there is no such ceiling to check.
    assert "workerMaxReplicas" not in str(failure("prod", workerMaxReplicas=40, karpenter=False, workerNodeDesired=50))


def test_poolers_that_would_exhaust_the_database_are_refused_naming_the_keys():
    """Each Pooler pod runs its own PgBouncer, and PgBouncer keeps one pool per user: the owner's and the workers'
    role each may fill the pool size in every pod, so 4 pods × 60 × 2 server connections do not fit 200."""
    message = str(failure("prod", pgbouncerInstances=4, pgbouncerPoolSize=60, postgresMaxConnections=200))
    assert ("airflow:pgbouncerPoolSize: pgbouncerInstances (4) × pgbouncerPoolSize (60) × 2 roles = 480 server "
            "connections") in message
    assert "postgresMaxConnections (200)" in message
    # The boundary: 200 - (3 superuser + 4 auth_query + 5 KEDA's role's limit + 5) = 183 for the pools;
    # 4 x 22 x 2 = 176 fits, 4 x 23 x 2 = 184 does not.
    run_program("prod", overrides={"pgbouncerInstances": 4, "pgbouncerPoolSize": 22, "postgresMaxConnections": 200})
    assert "= 184 server connections" in str(failure("prod", pgbouncerInstances=4, pgbouncerPoolSize=23,
                                                         postgresMaxConnections=200))
    # The managed engines' PgBouncer fronts a database whose limit AWS sets by instance class: not checked here.
    run_program("prod-managed", overrides={"pgbouncerInstances": 4, "pgbouncerPoolSize": 60})


def test_an_s3_bucket_pattern_that_matches_everything_is_refused():
    message = str(failure("prod", s3EndpointBuckets=["data-lake", "**"]))
    assert "airflow:s3EndpointBuckets" in message and "names too little of a bucket" in message


def test_aws_workers_need_some_node_to_run_on():
    message = str(failure("prod", karpenter=False, workerNodeGroup="off"))
    assert "airflow:workerNodeGroup: is off and so is karpenter" in message


def test_every_problem_is_reported_at_once():
    message = str(failure("prod", workerNodeMaxx=1, kubernetesVersion="1.29", vpcCidr="10.0.0.0/8"))
    assert "workerNodeMaxx" in message
    assert "airflow:kubernetesVersion: the Airflow chart needs Kubernetes 1.30 or newer" in message
    assert "airflow:vpcCidr: must be a /16 to /20 network, got /8" in message


@pytest.mark.parametrize("key,value,expected", [
    ("adminPrincipalArns", ["arn:aws:iam::123:role/x"], "is not an IAM role or user ARN"),
    ("controlPlaneLogRetentionDays", 10, "CloudWatch accepts only"),
    ("workerNodeInstanceTypes", ["large"], "is not an EC2 instance type"),
    ("addonVersions", {"kube-dns": "v1"}, "is not an add-on this stack installs"),
    ("workerNodeTaints", [{"key": "a", "effect": "NoSchedule"}], "workerNodeTaints[0].effect"),
    ("target", "gcp", "Input should be 'aws' or 'local'"),
])
def test_field_rules(key, value, expected):
    assert expected in str(failure("prod", **{key: value}))


def test_defaults_suit_a_local_stack():
    settings = load_settings({})
    assert settings.target == "local"
    assert settings.kube_context == "kind-airflow"


def test_pulumi_yaml_documents_every_key_with_the_model_default():
    project_config = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["config"]
    assert project_config == pulumi_yaml_config(), "regenerate with `make docs`"
    documented = set(project_config)
    for field in Settings.model_fields.values():
        if field.alias not in documented:
            # Only map-valued settings (Pulumi.yaml cannot declare their type) and secrets (no default may
            # stand in plain text) are left out.
            assert isinstance(field.get_default(call_default_factory=True), (dict, list)) \
                or (field.json_schema_extra or {}).get("secret"), field.alias
            assert f"`airflow:{field.alias}`" in (REPO / "docs" / "settings.md").read_text()


def test_the_settings_doc_carries_the_settings_reference():
    settings_doc = (REPO / "docs" / "settings.md").read_text()
    assert settings_reference_markdown() in settings_doc, "regenerate it with `make docs`"


def test_every_setting_has_a_description():
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 10, name


@pytest.mark.parametrize("stack_file", sorted(REPO.glob("Pulumi.*.yaml")))
def test_stack_files_hold_no_plain_text_secret(stack_file):
    for key, value in (yaml.safe_load(stack_file.read_text())["config"] or {}).items():
        # Where secrets are looked up is not itself a secret.
        if key in ("airflow:secretsBackend", "airflow:secretsManagerPrefix"):
            continue
        if re.search(r"(?i)password|secret|token|privatekey", key):
            assert isinstance(value, dict) and "secure" in value, f"{stack_file.name}: {key}"


def test_settings_error_is_a_value_error_with_every_line_prefixed():
    with pytest.raises(SettingsError) as caught:
        load_settings({"target": "aws", "regoin": "eu-west-1"})
    lines = str(caught.value).splitlines()[1:]
    assert lines and all(line.strip().startswith("- airflow:") for line in lines)


@pytest.mark.parametrize("stack_file", sorted(REPO.glob("Pulumi.*.yaml")))
def test_stack_file_values_have_the_types_pulumi_yaml_declares(stack_file):
    # The Pulumi CLI refuses a stack whose value does not match the project's declared type.
    declared = yaml.safe_load((REPO / "Pulumi.yaml").read_text())["config"]
    python_types = {"string": str, "integer": int, "boolean": bool, "array": list}
    for key, value in yaml.safe_load(stack_file.read_text())["config"].items():
        namespace, _, name = key.partition(":")
        if namespace != "airflow" or name not in declared:
            continue
        expected = python_types[declared[name]["type"]]
        assert isinstance(value, expected) and not (expected is int and isinstance(value, bool)), \
            f"{stack_file.name}: {key} must be {declared[name]['type']}, got {value!r}"


AWS_MINIMUM = {"target": "aws", "region": "eu-west-1", "ingressHost": "a.example.com", "grafanaHost": "g.example.com",
               "route53ZoneId": "Z0123"}


@pytest.mark.parametrize(("day", "version", "refused"), [
    (datetime.date(2026, 12, 2), "1.34", False),    # its last day of standard support
    (datetime.date(2026, 12, 3), "1.34", True),
    (datetime.date(2027, 3, 28), "1.35", True),
    (datetime.date(2027, 3, 28), "1.36", False),    # not in the calendar yet: passes
])
def test_a_version_past_eks_standard_support_is_refused_on_aws(monkeypatch, day, version, refused):
    """AWS's release calendar: 1.34's standard support ends on 2 December 2026, 1.35's on 27 March 2027; with the
    STANDARD upgrade policy EKS then upgrades the control plane itself, and the stack's version is a downgrade."""
    from components import config
    from components.config import SettingsError, load_settings
    monkeypatch.setattr(config, "today", lambda: day)
    config = {**AWS_MINIMUM, "kubernetesVersion": version}
    if refused:
        with pytest.raises(SettingsError, match=rf"airflow:kubernetesVersion: {re.escape(version)} left EKS's "
                                                r"standard support on \d{4}-\d{2}-\d{2}: .* a downgrade it refuses"
                                                r"\. Run `pulumi refresh`") as refusal:
            load_settings(config)
        # What is still supported that day, or what to do when the calendar knows nothing newer.
        assert ("in standard support (1.35)" if day.year == 2026 else "add the next version's date") in str(refusal.value)
    else:
        assert load_settings(config).kubernetes_version == version
    # A laptop cluster has no EKS to upgrade it.
    assert load_settings({"kubernetesVersion": version}).kubernetes_version == version


def test_the_calendar_knows_the_stacks_version_and_it_is_supported_today():
    from components.cluster.settings import EKS_STANDARD_SUPPORT_ENDS, today
    from support.stacks import stack_settings
    for stack in ("staging", "prod", "prod-managed"):
        version = stack_settings(stack).kubernetes_version
        assert EKS_STANDARD_SUPPORT_ENDS[version] >= today(), (stack, version)


@pytest.mark.parametrize("project,stack", [("airflow", "Prod"), ("airflow", "prod_eu"),
                                           ("airflow", "production-europe-west-1"), ("Airflow", "prod"),
                                           ("data-platform-airflow-team", "prod")])
def test_an_aws_stack_name_that_cannot_name_buckets_is_refused_before_anything_is_created(project, stack):
    with pytest.raises(SettingsError, match=rf"project '{project}' and stack '{re.escape(stack)}': target 'aws' "
                                            rf"names buckets, the backup vault and plan and KMS aliases "
                                            rf"'{project}-{re.escape(stack)}'"):
        load_settings(AWS_MINIMUM, stack=stack, project=project)


def test_stack_names_that_fit_are_accepted():
    assert load_settings(AWS_MINIMUM, stack="prod-eu").is_aws
    assert load_settings(AWS_MINIMUM, stack="prod", project="data-platform-airflow").is_aws  # 28 characters
    assert not load_settings({}, stack="Anything_Goes_Locally").is_aws


@pytest.mark.parametrize("taints,wrong", [
    ([{"key": "dedicated", "value": "a b", "effect": "NO_SCHEDULE"}], "value"),
    ([{"key": "dedicated", "value": "x", "effect": "NO_SCHEDULE"},
      {"key": "dedicated", "value": "y", "effect": "NO_SCHEDULE"}], "same key and effect"),
    ([{"key": "airflow.apache.org/node-role", "value": "gpu", "effect": "NO_SCHEDULE"}], "platform's own"),
])
def test_worker_taints_a_node_pool_would_refuse_are_refused_by_name(taints, wrong):
    with pytest.raises(ValueError, match="workerNodeTaints") as error:
        load_settings({"target": "aws", "workerNodeTaints": taints})
    assert wrong in str(error.value)


def test_a_worker_taint_without_a_value_leaves_the_value_out_for_karpenter():
    """Karpenter 1.14's NodePool CRD refuses an empty taint value (its pattern needs a character)."""
    from support.schemas import validate_custom_resource
    run = run_program("staging", overrides={"workerNodeTaints": [{"key": "dedicated", "effect": "NO_SCHEDULE"},
                                                                 {"key": "team", "value": "data", "effect": "NO_EXECUTE"}]})
    node_pool = run.one("kubernetes:karpenter.sh/v1:NodePool")
    validate_custom_resource(node_pool)
    pool = node_pool.values["spec"]["template"]["spec"]["taints"]
    assert {"key": "dedicated", "effect": "NoSchedule"} in pool
    assert {"key": "team", "value": "data", "effect": "NoExecute"} in pool


@pytest.mark.parametrize(("config", "key", "says"), [
    ({"gitSyncEgressCidrs": ["140.82.112.0/20"]}, "gitSyncEgressCidrs", "only with gitSyncRepository"),
    ({"gitSyncRepository": "https://git.example.com:8443/dags.git"}, "gitSyncRepository", "port 443 only"),
    ({"gitSyncRepository": "https://10.20.3.4/dags.git"}, "gitSyncRepository", "not a public address"),
    ({"gitSyncRepository": "https://10.20.3.4/dags.git", "gitSyncEgressCidrs": ["192.168.0.0/28"]},
     "gitSyncRepository", "outside gitSyncEgressCidrs"),
    ({"gitSyncRepository": "https://[2001:db8::1]/dags.git"}, "gitSyncRepository", "IPv4 only"),
    ({"gitSyncRepository": "https:///dags.git"}, "gitSyncRepository", "names no host"),
    # The setting must not reopen what the policies keep git-sync from: the VPC, the metadata service.
    ({"gitSyncRepository": "https://github.com/x/y.git", "gitSyncEgressCidrs": ["0.0.0.0/0"]},
     "gitSyncEgressCidrs", "loopback, link-local"),
    ({**AWS_MINIMUM, "vpcCidr": "10.20.0.0/16", "gitSyncRepository": "https://10.20.3.4/dags.git",
      "gitSyncEgressCidrs": ["10.20.0.0/16"]}, "gitSyncEgressCidrs", "wider than /28"),
    ({**AWS_MINIMUM, "vpcCidr": "44.20.0.0/16", "gitSyncRepository": "https://github.com/x/y.git",
      "gitSyncEgressCidrs": ["44.0.0.0/8"]}, "gitSyncEgressCidrs", "wider than /28"),
])
def test_a_git_sync_repository_the_policies_would_cut_off_is_refused(config, key, says):
    """The NetworkPolicies let git-sync out on 443 to gitSyncEgressCidrs, or else to public addresses only."""
    with pytest.raises(SettingsError) as caught:
        load_settings(config)
    assert f"airflow:{key}" in str(caught.value) and says in str(caught.value), str(caught.value)


def test_a_git_sync_repository_the_policies_admit_is_accepted():
    for config in ({"gitSyncRepository": "https://github.com/example/dags.git"},
                   {"gitSyncRepository": "https://github.com:443/example/dags.git"},
                   {"gitSyncRepository": "https://10.20.3.4/dags.git", "gitSyncEgressCidrs": ["10.20.3.0/28"]},
                   {"gitSyncRepository": "https://GitHub.com/example/dags.git",
                    "gitSyncEgressCidrs": ["140.82.112.0/20", "192.30.252.0/22"]}):
        assert load_settings(config).git_sync_repository == config["gitSyncRepository"]


def test_no_area_shadows_another():
    """The flat Settings inherits every area's model: a field, validator or property that two areas both define
    would silently keep one of them (pydantic collects validators by name), so each name belongs to one area."""
    from components.config import AREAS
    from components.platform import PlatformSettings

    owners: dict[str, list[str]] = {}
    for area in AREAS:
        names = set(vars(area)) if area is PlatformSettings else set(vars(area)) - set(vars(PlatformSettings))
        for name in names - {"model_config", "model_fields", "model_computed_fields", "__doc__", "__module__",
                             "__qualname__", "__annotations__", "__class_vars__", "__private_attributes__",
                             "__signature__", "__pydantic_complete__", "__pydantic_core_schema__",
                             "__pydantic_custom_init__", "__pydantic_decorators__", "__pydantic_fields__",
                             "__pydantic_generic_metadata__", "__pydantic_parent_namespace__",
                             "__pydantic_post_init__", "__pydantic_serializer__", "__pydantic_validator__",
                             "__abstractmethods__", "_abc_impl", "__firstlineno__", "__static_attributes__",
                             "__pydantic_setattr_handlers__", "__pydantic_computed_fields__", "__weakref__",
                             "__dict__", "__pydantic_fields_complete__", "__pydantic_root_model__"}:
            owners.setdefault(name, []).append(area.__name__)
    for area in AREAS:
        for name in area.__pydantic_decorators__.field_validators:
            owners.setdefault(f"validator {name}", []).append(area.__name__)
    shared = {name: areas for name, areas in owners.items() if len(set(areas)) > 1}
    assert not shared, f"defined by more than one area: {shared}"


def test_each_area_slice_holds_exactly_its_own_settings():
    """A component's slice carries its area's values as the stack set them, and nothing of another area."""
    from components.airflow.settings import AirflowSettings
    from components.config import load_settings

    settings = load_settings({**AWS_MINIMUM, "workerMaxReplicas": "7", "redisReplicas": "5"})
    airflow = settings.airflow
    assert type(airflow) is AirflowSettings and airflow.worker_max_replicas == 7 and airflow.is_aws
    assert settings.broker.redis_replicas == 5
    assert not hasattr(airflow, "redis_replicas") and not hasattr(settings.broker, "worker_max_replicas")
    assert set(AirflowSettings.model_fields) < set(type(settings).model_fields)
