"""Ships only the client's modules of the packages it shares with the full
distribution: rootproc's package marker and its client, and the part of
_trim the wire format needs (never the kernel, the root or the leaf)."""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = {
    "_trim": {"__init__", "batch", "decoded", "errors", "format", "groups", "memory", "plan"},
    "_trim.transport": None,                 # all of it: sockets, frames, CURVE, protocol
    "rootproc": {"__init__"},
    "rootproc.client": {"__init__", "scoring_client", "async_client", "connection", "health"},
}


class ClientModulesOnly(build_py):
    def find_package_modules(self, package, package_dir):
        wanted = SHIPPED[package]
        return [m for m in super().find_package_modules(package, package_dir)
                if wanted is None or m[1] in wanted]


# Its metadata goes under client/build, not beside the packages (the checkout's root).
os.makedirs("build", exist_ok=True)
setup(cmdclass={"build_py": ClientModulesOnly}, options={"egg_info": {"egg_base": "build"}})
