"""
The commands the documentation tells a reader to paste, pasted: README's
five-minute demo (which the tutorial repeats), run by C{bash} with the
installed C{twistd}, on free loopback ports in place of the documented
ones.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys

from tests.support import REPOSITORY
from tests.support.net import freePort
from tests.support.processes import BIN, TwistdTestCase

#: The documented ports, each replaced by a free one of its kind.
PORTS = {"9999": "tcp", "5073": "udp", "34559": "udp", "5072": "udp"}


def codeBlock(path: str, name: str) -> str:
    """
    The body of the C{code-block} with C{:name: NAME} in the reST file at
    C{path}, dedented.

    @raise LookupError: there is none.
    """
    with open(os.path.join(REPOSITORY, path)) as file:
        text = file.read()
    match = re.search(r"^\.\. code-block:: bash\n   :name: " + re.escape(name)
                      + r"\n\n((?:   .*\n|\n)+)", text, re.MULTILINE)
    if match is None:
        raise LookupError(f"no code-block named {name} in {path}")
    return "\n".join(line[3:] for line in match.group(1).splitlines()).strip() + "\n"


class DemoTests(TwistdTestCase):
    """
    README's demo, as a reader pastes it.
    """

    def test_tutorialRepeatsTheReadme(self) -> None:
        """
        The tutorial's demo is README's, word for word: one script to keep
        working, run by L{test_readmeDemo}.
        """
        self.assertEqual(codeBlock("docs/tutorial/one-machine.rst", "tutorial-demo"),
                         codeBlock("README.rst", "readme-demo"))

    def test_readmeDemo(self) -> None:
        """
        Pasted into C{bash} in a directory with the installed C{.venv}, the
        demo prints what README says: the POP got the datagram from the
        client's fixed port, the application got the reply in capitals from
        the port it sent to; the two ends it started are stopped by its
        last line, and each log shows the link up.
        """
        script = codeBlock("README.rst", "readme-demo")
        ports = {}
        for documented, kind in PORTS.items():
            ports[documented] = str(freePort(
                socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM))
            script = re.sub(rf"\b{documented}\b", ports[documented], script)
        script = script.replace("python3 ", f"{sys.executable} ")
        os.makedirs(self.path(".venv"))
        os.symlink(BIN, self.path(".venv/bin"))
        process = subprocess.Popen(
            ["bash", "-c", script], cwd=self.directory, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        self.addCleanup(self.stopGroup, process)
        output, _ = process.communicate(timeout=60)
        self.assertEqual(process.returncode, 0, output)
        self.assertIn(f"POP got b'hello' from ('127.0.0.1', {ports['34559']})", output)
        self.assertIn(f"(b'HELLO', ('127.0.0.1', {ports['5073']}))", output)
        for name in ("server.log", "client.log"):
            with open(self.path(name)) as file:
                log = file.read()
            self.assertIn("link up", log, name)

    def stopGroup(self, process: subprocess.Popen[str]) -> None:
        """
        Stop what the script started and left running (a failed run), by
        the process group the test made for it.
        """
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if process.poll() is None:
            process.kill()
            process.wait()
