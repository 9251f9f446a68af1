"""The fake AWS: for each resource and invoke, the outputs the program reads."""

from __future__ import annotations

import base64
import random
import secrets
import string
from typing import Any, Optional

from pulumi.runtime import mocks as pulumi_mocks

from mock_engine.values import unwrap

# Invoke results for the data sources the program reads.
FAKE_ZONES = ["eu-west-1a", "eu-west-1b", "eu-west-1c", "eu-west-1d"]
FAKE_ACCOUNT = "111122223333"
# S3's prefix list in eu-west-1, as `aws ec2 describe-managed-prefix-lists` lists it.
FAKE_S3_CIDRS = ["3.5.64.0/21", "3.5.72.0/23", "52.92.0.0/17", "52.218.0.0/17"]
# Who runs `pulumi up` unless a test says otherwise: the stacks' admin role (a first `up` from an admin machine).
DEPLOYER_ROLE = f"arn:aws:iam::{FAKE_ACCOUNT}:role/platform-admins"


def fake_password(inputs: dict[str, Any], must_include: str = "", rng: Optional[random.Random] = None) -> str:
    """A password drawn like random.RandomPassword draws it: its length, classes and special set.

    Fresh on every run (or from a seed drawn at run time), so no credential is ever committed in a fixture.
    """
    rng = rng or secrets.SystemRandom()
    alphabet = string.ascii_letters + string.digits
    special = inputs.get("overrideSpecial") if inputs.get("special", True) else ""
    if inputs.get("special", True) and special is None:
        special = "!@#$%&*()-_=+[]{}<>:?"
    chars = [rng.choice(string.ascii_lowercase) for _ in range(int(inputs.get("minLower", 0)))]
    chars += [rng.choice(string.ascii_uppercase) for _ in range(int(inputs.get("minUpper", 0)))]
    chars += [rng.choice(string.digits) for _ in range(int(inputs.get("minNumeric", 0)))]
    chars += [rng.choice(special) for _ in range(int(inputs.get("minSpecial", 0)))] if special else []
    pool = alphabet + (special or "")
    chars += list(must_include)
    chars += [rng.choice(pool) for _ in range(max(0, int(inputs["length"]) - len(chars)))]
    rng.shuffle(chars)
    return "".join(chars)


class PlatformMocks(pulumi_mocks.Mocks):
    """Returns, for each resource and invoke, the outputs the program reads.

    `password_characters` go into every generated password, so tests can prove that characters with a
    meaning in URLs survive the trip from the generator to a real server; `password_seed` (drawn at run
    time by the test) makes two runs generate the same passwords.
    """

    def __init__(self, password_characters: str = "", password_seed: Optional[int] = None,
                 deployer_arn: str = DEPLOYER_ROLE):
        super().__init__()
        self.invokes: list[tuple[str, dict]] = []
        self.password_characters = password_characters
        self.password_seed = password_seed
        self.deployer_arn = deployer_arn

    def new_resource(self, args: pulumi_mocks.MockResourceArgs):
        inputs = unwrap(args.inputs)
        name = inputs.get("name") or args.name
        state = dict(inputs)
        state.setdefault("arn", f"arn:aws:mock:eu-west-1:{FAKE_ACCOUNT}:{args.typ.split(':')[-1].lower()}/{name}")
        if args.typ == "aws:eks/cluster:Cluster":
            state.update(
                endpoint=f"https://{name}.gr7.eu-west-1.eks.amazonaws.com",
                certificateAuthority={"data": "bW9jay1jYQ=="},
                vpcConfig={**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": f"sg-{name}"},
            )
        elif args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            state["latestVersion"] = 1
        elif args.typ == "aws:rds/cluster:Cluster":
            identifier = inputs["clusterIdentifier"]
            state.update(clusterResourceId=f"cluster-{identifier.upper()}",
                         endpoint=f"{identifier}.cluster-cmock0example.eu-west-1.rds.amazonaws.com",
                         readerEndpoint=f"{identifier}.cluster-ro-cmock0example.eu-west-1.rds.amazonaws.com")
        elif args.typ == "aws:rds/instance:Instance":
            state["address"] = f"{inputs['identifier']}.cmock0example.eu-west-1.rds.amazonaws.com"
            state["resourceId"] = f"db-{inputs['identifier'].upper()}"
        elif args.typ == "aws:elasticache/replicationGroup:ReplicationGroup":
            state["primaryEndpointAddress"] = f"master.{inputs['replicationGroupId']}.mock0x.euw1.cache.amazonaws.com"
        elif args.typ == "aws:kms/key:Key":
            state["keyId"] = f"key-{args.name}"
        elif args.typ == "aws:iam/role:Role":
            # IAM's own ARN format: arn:<partition>:iam::<account>:role/<path><name>.
            state["name"] = name
            state["arn"] = f"arn:aws:iam::{FAKE_ACCOUNT}:role{inputs.get('path') or '/'}{name}"
        elif args.typ == "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
            state["arn"] = f"arn:aws:iam::{FAKE_ACCOUNT}:oidc-provider/{inputs['url'].removeprefix('https://')}"
        elif args.typ == "aws:s3/bucket:Bucket":
            state["bucket"] = f"{inputs['bucketPrefix']}mock"
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
        elif args.typ == "aws:acm/certificate:Certificate":
            state["domainValidationOptions"] = [{
                "domainName": domain, "resourceRecordName": f"_x1.{domain}.",
                "resourceRecordType": "CNAME", "resourceRecordValue": f"_x2.{domain}.acm-validations.aws."}
                # ACM's options are a set: listed here in another order than the domains were given.
                for domain in reversed([inputs["domainName"], *(inputs.get("subjectAlternativeNames") or [])])]
        elif args.typ == "kubernetes:networking.k8s.io/v1:Ingress":
            state["status"] = {"loadBalancer": {"ingress": [
                {"hostname": f"k8s-airflow-{args.name}-1234567890.eu-west-1.elb.amazonaws.com"}]}}
        elif args.typ == "aws:route53/record:Record":
            state["fqdn"] = inputs["name"].rstrip(".")
        elif args.typ == "random:index/randomPassword:RandomPassword":
            rng = random.Random(f"{self.password_seed}-{args.name}") if self.password_seed is not None else None
            state["result"] = fake_password(inputs, self.password_characters, rng)
        elif args.typ == "random:index/randomId:RandomId":
            raw = random.Random(f"{self.password_seed}-{args.name}").randbytes(int(inputs["byteLength"]))
            state.update(hex=raw.hex(), b64Url=base64.urlsafe_b64encode(raw).decode().rstrip("="))
        elif args.typ == "random:index/randomBytes:RandomBytes":
            raw = (random.Random(f"{self.password_seed}-{args.name}").randbytes(int(inputs["length"]))
                   if self.password_seed is not None else secrets.token_bytes(int(inputs["length"])))
            state.update(base64=base64.b64encode(raw).decode(), hex=raw.hex())
        return f"{args.name}-id", state

    def call(self, args: pulumi_mocks.MockCallArgs):
        self.invokes.append((args.token, dict(args.args)))
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": FAKE_ZONES, "zoneIds": [f"euw1-az{i}" for i in range(1, 5)], "id": "eu-west-1"}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            session = self.deployer_arn.replace(":iam::", ":sts::").replace(":role/", ":assumed-role/") + "/ci"
            return {"accountId": FAKE_ACCOUNT, "arn": session, "userId": "AROA:ci", "id": FAKE_ACCOUNT}
        if args.token == "aws:iam/getSessionContext:getSessionContext":
            # The principal running `pulumi up` (a role session in CI): see DEPLOYER_ROLE.
            return {"arn": args.args["arn"], "issuerArn": self.deployer_arn, "issuerId": "AROA",
                    "issuerName": self.deployer_arn.rsplit("/", 1)[-1], "sessionName": "ci", "id": args.args["arn"]}
        if args.token == "aws:ec2/getPrefixList:getPrefixList":
            return {"name": args.args["name"], "prefixListId": "pl-6da54004", "cidrBlocks": FAKE_S3_CIDRS,
                    "id": "pl-6da54004"}
        if args.token == "aws:ec2/getVpcEndpointService:getVpcEndpointService":
            return {"serviceName": f"com.amazonaws.eu-west-1.{args.args['service']}", "id": "vpce-svc-s3",
                    "serviceType": args.args["serviceType"]}
        if args.token == "aws:lb/getHostedZoneId:getHostedZoneId":
            return {"id": "Z32O12XQLNTSW2"}
        if args.token == "aws:eks/getAddonVersion:getAddonVersion":
            return {"version": f"v1.0.0-eksbuild.1-{args.args['addonName']}", "id": args.args["addonName"]}
        raise NotImplementedError(f"the mocks do not answer invoke {args.token}; add it to mock_engine/mocks.py")
