"""CDI specs as the Container Device Interface defines them: parsing (JSON and YAML), validation,
directory priority, conflicts, bad files reported by path, and edits applied to OCI specs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from corral.kernel import FailedPrecondition, InvalidArgument, NotFound
from corral.plugins.cdi import Registry, SpecError, annotation_key, devices_from_annotations, parse_spec

NULL = os.stat("/dev/null")
NULL_MAJOR, NULL_MINOR = os.major(NULL.st_rdev), os.minor(NULL.st_rdev)


def write(directory: Path, name: str, spec: dict[str, Any] | str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return path


def device_spec(kind: str = "vendor.com/fake", name: str = "one", **edits: Any) -> dict[str, Any]:
    return {
        "cdiVersion": "0.6.0",
        "kind": kind,
        "devices": [{"name": name, "containerEdits": edits or {"env": [f"DEVICE={name}"]}}],
    }


YAML_SPEC = """\
cdiVersion: 0.6.0
kind: example.org/gpu
containerEdits:
  env: [SHARED=1]
devices:
  - name: gpu0
    containerEdits:
      deviceNodes:
        - path: /dev/fake-gpu0
          hostPath: /dev/null
      env: [GPU=0]
"""


def test_a_yaml_spec_is_parsed_and_its_device_named_by_vendor_class_and_name() -> None:
    spec = parse_spec(YAML_SPEC, "/etc/cdi/gpu.yaml")
    assert (spec.vendor, spec.class_, list(spec.devices)) == ("example.org", "gpu", ["gpu0"])
    assert spec.devices["gpu0"].qualified_name == "example.org/gpu=gpu0"
    assert spec.edits == {"env": ["SHARED=1"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cdiVersion": "9.9.9"}, "invalid version '9.9.9'"),
        ({"kind": "novendor"}, "invalid vendor. empty name"),
        ({"kind": "1vendor.com/x"}, "should start with letter"),
        ({"kind": "vendor.com/cl@ss"}, "invalid character '@'"),
        ({"devices": []}, "invalid spec, no devices"),
        (
            {"devices": [{"name": "-bad", "containerEdits": {"env": ["A=1"]}}]},
            "should start with a letter or digit",
        ),
        ({"devices": [{"name": "empty", "containerEdits": {}}]}, "empty device edits"),
        (
            {"devices": [{"name": "e", "containerEdits": {"env": ["NOEQUALS"]}}]},
            "invalid environment variable",
        ),
        (
            {
                "devices": [
                    {"name": "d", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "type": "z"}]}}
                ]
            },
            "invalid type 'z'",
        ),
        (
            {
                "devices": [
                    {
                        "name": "d",
                        "containerEdits": {"deviceNodes": [{"path": "/dev/x", "permissions": "rwx"}]},
                    }
                ]
            },
            "invalid permissions 'rwx'",
        ),
        (
            {"devices": [{"name": "m", "containerEdits": {"mounts": [{"hostPath": "/a"}]}}]},
            "empty container path",
        ),
        (
            {"devices": [{"name": "h", "containerEdits": {"hooks": [{"hookName": "later", "path": "/x"}]}}]},
            "invalid hook name 'later'",
        ),
        ({"colour": "blue"}, 'unknown field "colour"'),
        (
            {"cdiVersion": "0.4.0", "devices": [{"name": "g", "containerEdits": {"additionalGids": [5]}}]},
            "the spec version must be at least v0.7.0",
        ),
    ],
)
def test_invalid_specs_are_refused_with_the_reason(change: dict[str, Any], message: str) -> None:
    spec = {**device_spec(), **change}
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_spec(json.dumps(spec), "/etc/cdi/bad.json")


def test_two_devices_of_one_name_in_a_spec_are_refused() -> None:
    spec = device_spec()
    spec["devices"] = spec["devices"] * 2
    with pytest.raises(SpecError, match=r"multiple device 'one'"):
        parse_spec(json.dumps(spec), "x.json")


def test_a_bad_spec_is_reported_by_its_path_and_leaves_the_others_usable(tmp_path: Path) -> None:
    good = write(tmp_path / "etc", "good.json", device_spec())
    bad = write(tmp_path / "etc", "bad.yaml", "cdiVersion: 0.6.0\nkind: [oops\n")
    write(tmp_path / "etc", "notes.txt", "not a spec")
    registry = Registry([str(tmp_path / "etc")])
    assert [(d.name, d.spec_path) for d in registry.devices()] == [("vendor.com/fake=one", str(good))]
    errors = registry.errors()
    assert list(errors) == [str(bad)] and "failed to unmarshal CDI Spec" in errors[str(bad)][0]
    spec: dict[str, Any] = {"process": {"env": []}}
    registry.inject(spec, ["vendor.com/fake=one"])
    assert spec["process"]["env"] == ["DEVICE=one"]


def test_a_later_directory_overrides_an_earlier_one_and_equal_priority_is_a_conflict(tmp_path: Path) -> None:
    write(tmp_path / "etc", "a.json", device_spec(env=["FROM=etc"]))
    write(tmp_path / "run", "a.json", device_spec(env=["FROM=run"]))
    registry = Registry([str(tmp_path / "etc"), str(tmp_path / "run")])
    spec: dict[str, Any] = {}
    registry.inject(spec, ["vendor.com/fake=one"])
    assert spec["process"]["env"] == ["FROM=run"]
    first = write(tmp_path / "run", "b.json", device_spec(env=["FROM=b"]))
    registry.refresh()
    assert registry.devices() == []
    assert f"conflicting device 'vendor.com/fake=one' (specs '{first}'" in registry.errors()[str(first)][0]
    with pytest.raises(
        NotFound, match=r"unresolvable CDI devices vendor\.com/fake=one; .*conflicting device"
    ):
        registry.inject({}, ["vendor.com/fake=one"])


def test_device_nodes_get_their_type_and_numbers_from_the_host(tmp_path: Path) -> None:
    write(tmp_path, "gpu.yaml", YAML_SPEC)
    registry = Registry([str(tmp_path)])
    spec: dict[str, Any] = {"process": {"env": ["PATH=/bin"], "user": {"uid": 1000, "gid": 1000}}}
    registry.inject(spec, ["example.org/gpu=gpu0"])
    [device] = spec["linux"]["devices"]
    assert device == {
        "path": "/dev/fake-gpu0", "type": "c", "major": NULL_MAJOR, "minor": NULL_MINOR,
        "fileMode": NULL.st_mode & 0o7777, "uid": 1000, "gid": 1000,
    }  # fmt: skip
    assert spec["linux"]["resources"]["devices"] == [
        {"allow": True, "type": "c", "major": NULL_MAJOR, "minor": NULL_MINOR, "access": "rwm"}
    ]
    assert spec["process"]["env"] == ["PATH=/bin", "SHARED=1", "GPU=0"]


def test_mounts_hooks_and_groups_are_applied(tmp_path: Path) -> None:
    edits = {
        "mounts": [{"hostPath": "/opt/lib", "containerPath": "/usr/lib/vendor", "options": ["ro", "bind"]}],
        "hooks": [
            {"hookName": "createContainer", "path": "/usr/bin/vendor-hook", "args": ["vendor-hook", "x"]}
        ],
        "additionalGids": [44, 0],
    }
    write(tmp_path, "v.json", {**device_spec(**edits), "cdiVersion": "0.7.0"})
    spec: dict[str, Any] = {"mounts": [{"destination": "/usr/lib/vendor/sub"}, {"destination": "/proc"}]}
    Registry([str(tmp_path)]).inject(spec, ["vendor.com/fake=one"])
    assert [m["destination"] for m in spec["mounts"]] == ["/proc", "/usr/lib/vendor", "/usr/lib/vendor/sub"]
    assert spec["mounts"][1] == {
        "source": "/opt/lib",
        "destination": "/usr/lib/vendor",
        "options": ["ro", "bind"],
    }
    assert spec["hooks"] == {
        "createContainer": [{"path": "/usr/bin/vendor-hook", "args": ["vendor-hook", "x"]}]
    }
    assert spec["process"]["user"]["additionalGids"] == [44]


def test_unknown_and_conflicting_requests_are_refused_and_change_nothing(tmp_path: Path) -> None:
    spec_a = device_spec(name="a", env=["MODE=a"])
    spec_a["devices"].append({"name": "b", "containerEdits": {"env": ["MODE=b"]}})
    write(tmp_path, "v.json", spec_a)
    registry = Registry([str(tmp_path)])
    original: dict[str, Any] = {"process": {"env": ["X=1"]}}
    spec = json.loads(json.dumps(original))
    with pytest.raises(
        FailedPrecondition, match=r"conflicting CDI devices vendor\.com/fake=a and vendor\.com/fake=b"
    ):
        registry.inject(spec, ["vendor.com/fake=a", "vendor.com/fake=b"])
    with pytest.raises(NotFound, match=r"unresolvable CDI devices vendor\.com/fake=zzz"):
        registry.inject(spec, ["vendor.com/fake=a", "vendor.com/fake=zzz"])
    with pytest.raises(InvalidArgument, match=r"unqualified device 'plain'"):
        registry.inject(spec, ["plain"])
    assert spec == original


def test_devices_are_requested_with_cdi_annotations() -> None:
    key = annotation_key("corral-run", "0")
    assert key == "cdi.k8s.io/corral-run_0"
    annotations = {key: "vendor.com/fake=a,vendor.com/fake=b", "other": "x"}
    assert devices_from_annotations(annotations) == ["vendor.com/fake=a", "vendor.com/fake=b"]
    with pytest.raises(SpecError, match="invalid CDI device name 'nope'"):
        devices_from_annotations({key: "nope"})
