"""UpdateRuntimeConfig's pod CIDR: routes per address family, the CNI conflist rendered from an
operator's Go template (containerd's own test template and GCE's contrib template), and when
nothing is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from corral.kernel import FailedPrecondition, InvalidArgument
from corral.plugins.cri.config import CNIConfig, RuntimeConfig
from corral.plugins.cri.podcidr import CNI_CONFIG_FILE, TemplateError, pod_cidr_routes, render_go_template
from corral.plugins.cri.runtime import CRIRuntimeService

GCE_TEMPLATE = """{
  "name": "k8s-pod-network",
  "cniVersion": "1.0.0",
  "plugins": [
    {
      "type": "ptp",
      "ipam": {
        "type": "host-local",
        "subnet": "{{.PodCIDR}}",
        "ranges": [{{range $i, $range := .PodCIDRRanges}}{{if $i}}, {{end}}[{"subnet": "{{$range}}"}]{{end}}],
        "routes": [{{range $i, $route := .Routes}}{{if $i}}, {{end}}{"dst": "{{$route}}"}{{end}}]
      }
    }
  ]
}
"""


def service(tmp_path: Path, template: str = "") -> CRIRuntimeService:
    cni = CNIConfig(conf_dir=str(tmp_path / "net.d"), conf_template=template)
    return CRIRuntimeService(RuntimeConfig(cni=cni))


def test_routes_are_one_default_route_per_family_in_containerds_order() -> None:
    assert pod_cidr_routes(["10.0.0.0/24"]) == ["0.0.0.0/0"]
    assert pod_cidr_routes(["2001:4860:4860::/64", "10.0.0.0/24"]) == ["0.0.0.0/0", "::/0"]
    with pytest.raises(ValueError, match=re.escape("invalid CIDR address: 10.0.0/33")):
        pod_cidr_routes(["10.0.0/33"])


def test_the_template_renders_the_dual_stack_cidrs_as_containerds_test_expects(tmp_path: Path) -> None:
    template = tmp_path / "cni.template"
    template.write_text(GCE_TEMPLATE)
    written = service(tmp_path, str(template)).update_runtime_config("10.0.0.0/24, 2001:4860:4860::/64")
    assert written == tmp_path / "net.d" / CNI_CONFIG_FILE
    ipam = json.loads(written.read_text())["plugins"][0]["ipam"]
    assert ipam["subnet"] == "10.0.0.0/24"
    assert ipam["ranges"] == [[{"subnet": "10.0.0.0/24"}], [{"subnet": "2001:4860:4860::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert oct(written.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in written.parent.iterdir()] == [CNI_CONFIG_FILE]  # no scratch file left


def test_nothing_is_written_without_a_template_an_empty_cidr_or_with_a_network_ready(tmp_path: Path) -> None:
    template = tmp_path / "cni.template"
    template.write_text(GCE_TEMPLATE)
    assert service(tmp_path).update_runtime_config("10.0.0.0/24") is None
    assert service(tmp_path, str(template)).update_runtime_config("") is None
    assert not (tmp_path / "net.d").exists()
    (tmp_path / "net.d").mkdir()
    (tmp_path / "net.d" / "05-mine.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "mine", "plugins": [{"type": "bridge"}]})
    )
    assert service(tmp_path, str(template)).update_runtime_config("10.0.0.0/24") is None
    assert sorted(p.name for p in (tmp_path / "net.d").iterdir()) == ["05-mine.conflist"]


def test_bad_input_is_refused_with_containerds_words_and_writes_nothing(tmp_path: Path) -> None:
    template = tmp_path / "cni.template"
    template.write_text("{{range .Nope}}x{{end}}")
    with pytest.raises(InvalidArgument) as bad_cidr:
        service(tmp_path, str(template)).update_runtime_config("10.0.0.0/24,nonsense")
    assert str(bad_cidr.value) == "get routes: invalid CIDR address: nonsense"
    with pytest.raises(FailedPrecondition) as broken:
        service(tmp_path, str(template)).update_runtime_config("10.0.0.0/24")
    assert (
        str(broken.value)
        == f"failed to parse cni config template {str(template)!r}: can't evaluate field Nope"
    )
    with pytest.raises(FailedPrecondition, match="No such file or directory"):
        service(tmp_path, str(tmp_path / "missing")).update_runtime_config("10.0.0.0/24")
    assert not (tmp_path / "net.d" / CNI_CONFIG_FILE).exists()


def test_the_go_template_subset_trims_branches_and_refuses_what_it_cannot_parse() -> None:
    data = {"A": ["x", "y"], "Empty": [], "S": "s"}
    assert render_go_template("a {{- .S -}} b", data) == "asb"
    assert render_go_template("{{range .A}}<{{.}}>{{end}}", data) == "<x><y>"
    assert render_go_template("{{range $v := .A}}{{$v}}{{$.S}}{{end}}", data) == "xsys"
    assert render_go_template("{{range .Empty}}x{{else}}none{{end}}", data) == "none"
    assert render_go_template("{{if .Empty}}y{{else}}n{{end}}{{/* a comment */}}", data) == "n"
    assert render_go_template("{{.A}}", data) == "[x y]"
    for broken in ("{{range .A}}", "{{end}}", "{{printf .S}}", "{{$nope}}"):
        with pytest.raises(TemplateError):
            render_go_template(broken, data)
