"""A CRI client for tests, built only from the generated runtime.v1 stubs (as a kubelet's is from
the CRI's own definition), so the same calls drive corrald and Debian's containerd alike."""

from __future__ import annotations

from typing import Any

import anyio
from grpclib.client import Channel

from corral.api.types.runtime import v1 as pb


class CRIClient:
    """Each call opens the socket, calls, closes: gRPC errors come back as grpclib's GRPCError."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def _call(self, service: str, method: str, request: Any, timeout: float = 120) -> Any:
        async def run() -> Any:
            channel = Channel(path=self.socket)
            try:
                stub = (
                    pb.RuntimeServiceStub(channel) if service == "runtime" else pb.ImageServiceStub(channel)
                )
                return await getattr(stub, method)(request, timeout=timeout)
            finally:
                channel.close()

        return anyio.run(run)

    def runtime(self, method: str, request: Any) -> Any:
        return self._call("runtime", method, request)

    def version(self) -> pb.VersionResponse:
        return self.runtime("version", pb.VersionRequest(version="v1"))

    def status(self, verbose: bool = False) -> pb.StatusResponse:
        return self.runtime("status", pb.StatusRequest(verbose=verbose))

    def pull(self, image: str, auth: pb.AuthConfig | None = None, handler: str = "") -> str:
        spec = pb.ImageSpec(image=image, runtime_handler=handler)
        response = self._call("images", "pull_image", pb.PullImageRequest(image=spec, auth=auth))
        return response.image_ref

    def image_status(self, image: str, verbose: bool = False) -> pb.ImageStatusResponse:
        request = pb.ImageStatusRequest(image=pb.ImageSpec(image=image), verbose=verbose)
        return self._call("images", "image_status", request)

    def list_images(self, filter_image: str = "") -> list[pb.Image]:
        request = pb.ListImagesRequest(
            filter=pb.ImageFilter(image=pb.ImageSpec(image=filter_image)) if filter_image else None
        )
        return list(self._call("images", "list_images", request).images)

    def remove(self, image: str) -> None:
        self._call("images", "remove_image", pb.RemoveImageRequest(image=pb.ImageSpec(image=image)))

    def fs_info(self) -> pb.ImageFsInfoResponse:
        return self._call("images", "image_fs_info", pb.ImageFsInfoRequest())


CONTAINERD_CRI_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.6"
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{base}/certs.d"
"""
