"""CNI: a pod's network through the standard plugins (containernetworking-plugins).

A small library, not a plugin: the pod sandbox controller (and CRI) give it a sandbox id and a
network namespace, and it runs the plugin binaries found in ``bin_dirs`` for the networks in
``conf_dir`` — ``.conf``/``.conflist``/``.json`` files, the first ``max_conf_num`` by name, as
containerd's CRI reads them — after the loopback network. It speaks the CNI contract (``CNI_*``
environment, the plugin's configuration on stdin with ``prevResult`` and the ``runtimeConfig``
of the capabilities it declares, such as portmap's ``portMappings``) and keeps each attachment in
a cache directory, so a teardown after a crash releases what the ADD took. Network namespaces
are bind mounts of nsfs on files (``cni-<uuid>``), as containerd's.
"""

from corral.plugins.cni._config import (
    CONF_EXTENSIONS,
    LOOPBACK_CONFLIST,
    NetworkConfigList,
    PluginConfig,
    conf_files,
    load_networks,
    parse_conflist,
    plugin_stdin,
)
from corral.plugins.cni._invoke import Invocation, find_plugin, run_plugin
from corral.plugins.cni._netns import NETNS_PREFIX, create_netns, is_mounted_netns, netns_name, remove_netns
from corral.plugins.cni._network import (
    CNI,
    DEFAULT_BIN_DIRS,
    DEFAULT_CONF_DIR,
    Attachment,
    CNISettings,
    IPConfig,
    PortMapping,
    SetupResult,
    pod_args,
    result_ips,
)

__all__ = [
    "CNI",
    "CONF_EXTENSIONS",
    "DEFAULT_BIN_DIRS",
    "DEFAULT_CONF_DIR",
    "LOOPBACK_CONFLIST",
    "NETNS_PREFIX",
    "Attachment",
    "CNISettings",
    "IPConfig",
    "Invocation",
    "NetworkConfigList",
    "PluginConfig",
    "PortMapping",
    "SetupResult",
    "conf_files",
    "create_netns",
    "find_plugin",
    "is_mounted_netns",
    "load_networks",
    "netns_name",
    "parse_conflist",
    "plugin_stdin",
    "pod_args",
    "remove_netns",
    "result_ips",
    "run_plugin",
]
