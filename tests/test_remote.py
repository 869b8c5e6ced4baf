"""Shared results through a DVC remote on S3: `dvc push` from one clone, `dvc pull` into a fresh clone of the same
commit, and `dvc repro` there runs nothing. The S3 server is moto's, on 127.0.0.1; nothing leaves this machine."""

import hashlib
from pathlib import Path

import pytest

from inpaint_sweep.assets import copy_sample_photos

from conftest import run, shrunk_clone, stage_env

pytestmark = pytest.mark.slow

BUCKET = "inpaint-results"
# Fake credentials and a region, no instance metadata: botocore never looks beyond the endpoint.
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}
ONE_CELL = {"guidance": "5", "strength": "1.0", "steps": "2", "negative_prompt": "\"''\""}
COMMIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm"]


@pytest.fixture
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def results(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in sorted((repo / "results").rglob("*")) if p.is_file()}


def test_results_pushed_to_s3_are_pulled_into_a_fresh_clone_and_nothing_reruns(tmp_path, s3_endpoint):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    (tmp_path / "aws").write_text("")  # an empty AWS config: nothing from ~/.aws applies
    aws = {**AWS, "AWS_CONFIG_FILE": str(tmp_path / "aws"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws")}

    # 1. One clone runs the pipeline on a one-cell grid, adds the remote as the README says, pushes, commits.
    first = shrunk_clone(tmp_path / "first", ONE_CELL)
    env = stage_env(PYTHONPATH=str(first / "src"), **aws)
    ran = run(["dvc", "repro"], cwd=first, env=env, timeout=600)
    assert ran.stdout.count("Running stage") == 3
    run(["dvc", "remote", "add", "-d", "shared", f"s3://{BUCKET}/inpaint-sweep"], cwd=first, env=env)
    run(["dvc", "remote", "modify", "shared", "endpointurl", s3_endpoint], cwd=first, env=env)
    run(["dvc", "push"], cwd=first, env=env)
    stored = {obj["Key"].split("/md5/")[1].replace("/", "")  # DVC names an object by its content's md5
              for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix="inpaint-sweep/")["Contents"]}
    photos = {str(p.relative_to(first)): p.read_bytes() for p in (first / "data" / "images").iterdir()}
    outputs = {path: hashlib.md5(data).hexdigest() for path, data in {**results(first), **photos}.items()
               if path != "results/report/metrics.json"}  # `cache: false`: in git, not pushed
    assert len(outputs) > 10 and set(outputs.values()) <= stored
    run(["git", "add", "-A"], cwd=first)
    run([*COMMIT, "ran and pushed"], cwd=first)

    # 2. A fresh clone of that commit (sample photos copied as `make data` does) pulls the results instead.
    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], cwd=tmp_path)
    copy_sample_photos(second / "data" / "images")
    env = stage_env(PYTHONPATH=str(second / "src"), **aws)
    run(["dvc", "pull"], cwd=second, env=env)
    assert results(second) == results(first)

    # 3. Everything is up to date: nothing runs.
    repro = run(["dvc", "repro"], cwd=second, env=env)
    assert "Running stage" not in repro.stdout, repro.stdout
    assert repro.stdout.count("didn't change, skipping") == 4, repro.stdout  # data/images.dvc and the 3 stages
