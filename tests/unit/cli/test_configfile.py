"""
L{udptunnel.cli.configfile}: a config file read table by table with the
command line's own checks, its errors, and the example files.
"""

from __future__ import annotations

import os
from dataclasses import replace

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support import REPOSITORY
from tests.support.options import load, writeFile
from udptunnel import tap
from udptunnel.cli.configfile import ConfigError, describeConfig, loadConfig

GOOD = """\
    metrics = "tcp:0:interface=127.0.0.1"

    [tunnel.seed]
    role = "server"
    udp = 5073
    tcp = "tcp:9999:interface=127.0.0.1"
    allow = ["127.0.0.0/8", "::1/128"]
    stats-interval = 0.5

    [tunnel.dns]
    role = "client"
    tcp = "127.0.0.1:853"
    udp = "127.0.0.1:5353"
    sessions = true
    max-sessions = 10
    """


class ParseTests(SynchronousTestCase):
    """
    A file is read table by table by the command line's own reader.
    """

    def test_goodFile(self) -> None:
        """
        Each table becomes its role's tunnel, with the same values the
        command line would give (numbers, lists, flags, defaults).
        """
        config = load(self, GOOD)
        self.assertEqual(list(config.tunnels), ["seed", "dns"])
        self.assertEqual(config.metrics, "tcp:0:interface=127.0.0.1")
        seed, dns = config.tunnels["seed"], config.tunnels["dns"]
        self.assertEqual((seed.role, dns.role), ("server", "client"))
        self.assertEqual(seed.config.udp.port, 5073)
        self.assertEqual(len(seed.config.allow), 2)
        self.assertEqual(seed.config.statsInterval, 0.5)
        self.assertTrue(dns.config.sessions)
        self.assertEqual(dns.config.maxSessions, 10)
        self.assertEqual(dns.config.sessionIdle, 180)  # the command line's default
        self.assertFalse(seed.config.sessions)

    def test_sameAsCommandLine(self) -> None:
        """
        A table and the command line it stands for give the same tunnel.
        """
        config = load(self, GOOD)
        line = tap.ClientOptions()
        line.parseOptions(["--tcp", "127.0.0.1:853", "--udp", "127.0.0.1:5353",
                           "--sessions", "--max-sessions", "10"])
        self.assertEqual(config.tunnels["dns"].config, replace(line.config, name="dns"))

    def test_plainTwisted(self) -> None:
        """
        C{plain-twisted} is the process's, at the top of the file.
        """
        self.assertFalse(load(self, GOOD).process().plainTwisted)
        self.assertTrue(load(self, "plain-twisted = true\n" + GOOD).process().plainTwisted)

    def test_falseFlag(self) -> None:
        """
        A flag set to C{false} is off, as if left out.
        """
        config = load(self, """\
            [tunnel.a]
            role = "server"
            tcp = 9999
            udp = 5073
            sessions = false
            """)
        self.assertFalse(config.tunnels["a"].config.sessions)

    def test_equalTablesCompareEqual(self) -> None:
        """
        What a reload compares: a tunnel with the same table is the same.
        """
        one, two = load(self, GOOD), load(self, GOOD)
        self.assertEqual(one.tunnels["seed"], two.tunnels["seed"])
        changed = load(self, GOOD.replace("max-sessions = 10", "max-sessions = 11"))
        self.assertEqual(one.tunnels["seed"], changed.tunnels["seed"])
        self.assertNotEqual(one.tunnels["dns"], changed.tunnels["dns"])


#: Bad files and what their error must say (besides the file's path).
BAD = [
    ("not TOML", "[tunnel.a\n", ["not valid TOML"]),
    ("too large", "#" * (1024 * 1024 + 1), ["larger than 1024 KiB", "not a config file?"]),
    ("no tunnel", 'metrics = 9100\n', ["no tunnel", "[tunnel.NAME]"]),
    ("plain-twisted not a flag",
     'plain-twisted = "yes"\n[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\n',
     ["plain-twisted: expected true or false"]),
    ("plain-twisted in a tunnel",
     '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nplain-twisted = true\n',
     ["[tunnel.a] plain-twisted: one for the whole process"]),
    ("unknown top key", 'metric = 9100\n[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\n',
     ["unknown key 'metric'", "did you mean 'metrics'"]),
    ("unknown key", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nsesions = true\n',
     ["[tunnel.a]", "unknown key 'sesions'", "did you mean 'sessions'", "udptunnel server"]),
    ("no role", '[tunnel.a]\ntcp = 1\nudp = 2\n', ["[tunnel.a] role: expected", "missing"]),
    ("bad role", '[tunnel.a]\nrole = "relay"\ntcp = 1\n', ["[tunnel.a] role:", "'relay'"]),
    ("flag not bool", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nsessions = "yes"\n',
     ["[tunnel.a] sessions: expected true or false, not 'yes'"]),
    ("list for one", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = [2, 3]\n',
     ["[tunnel.a] udp: expected a string or a number, not a list"]),
    ("bool for value", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = true\n',
     ["[tunnel.a] udp: expected a string or a number, not true"]),
    ("bad value", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 70000\n',
     ["[tunnel.a] udp:", "70000"]),
    ("bad number", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nkeepalive-count = 0\n',
     ["[tunnel.a] keepalive-count:", "from 1 to"]),
    ("bad list item", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nallow = ["10.0.0.0/33"]\n',
     ["[tunnel.a] allow:"]),
    ("required missing", '[tunnel.a]\nrole = "client"\nudp = 2\n',
     ["[tunnel.a] tcp is required"]),
    ("metrics in a tunnel", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nmetrics = 9100\n',
     ["[tunnel.a] metrics: one for the whole process", "top of the file"]),
    ("bad metrics", 'metrics = "nope:x"\n[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\n',
     ["metrics: 'nope:x' is not a port, HOST:PORT or an endpoint description"]),
    ("bad name", '[tunnel."a b"]\nrole = "server"\ntcp = 1\nudp = 2\n',
     ['[tunnel.a b]', "letters, digits"]),
    ("combination", '[tunnel.a]\nrole = "server"\ntcp = 1\nsessions = true\n',
     ["[tunnel.a] server sessions needs peer"]),
    ("help is no key", '[tunnel.a]\nrole = "server"\ntcp = 1\nudp = 2\nhelp = true\n',
     ["unknown key 'help'"]),
    ("a name with control characters", '[tunnel."a\\u001b[2J"]\nrole = "server"\n',
     ["[tunnel.a\\x1b[2J]", "letters, digits"]),
    ("two tunnels on one UDP port",
     ('[tunnel.a]\nrole = "server"\ntcp = 9001\nudp = "127.0.0.1:5073"\n'
     '[tunnel.b]\nrole = "client"\ntcp = "127.0.0.1:9"\nudp = "127.0.0.1:5073"\n'
     'peer = "127.0.0.1:53"\n'),
     ["tunnel a and tunnel b would both bind UDP 127.0.0.1:5073"]),
    ("a wildcard and an address on one UDP port",
     ('[tunnel.a]\nrole = "server"\ntcp = 9001\nudp = 5073\n'
     '[tunnel.b]\nrole = "server"\ntcp = 9002\nudp = "127.0.0.1:5073"\n'),
     ["tunnel a and tunnel b would both bind UDP 0.0.0.0:5073"]),
    ("two servers on one TCP port",
     ('[tunnel.a]\nrole = "server"\ntcp = "tcp:9001:interface=127.0.0.1"\nudp = 5073\n'
     '[tunnel.b]\nrole = "server"\ntcp = "tcp:9001"\nudp = 5074\n'),
     ["tunnel a and tunnel b would both bind TCP 127.0.0.1:9001"]),
    ("the metrics on a tunnel's TCP port",
     ('metrics = 9001\n[tunnel.a]\nrole = "server"\ntcp = "tcp:9001:interface=127.0.0.1"\n'
     'udp = 5073\n'),
     ["the metrics endpoint and tunnel a would both bind TCP 127.0.0.1:9001"]),
]


class BadFileTests(SynchronousTestCase):
    """
    Every check of the command line applies to the file, and its error
    names the file, the tunnel and the key.
    """

    def test_badFiles(self) -> None:
        """
        Each file of L{BAD} is a L{ConfigError} of one line that starts with the
        file's path and says all that its entry expects.
        """
        for what, text, expected in BAD:
            path = writeFile(self, text)
            with self.assertRaises(ConfigError, msg=what) as caught:
                loadConfig(path)
            message = str(caught.exception)
            self.assertTrue(message.startswith(path + ": "), (what, message))
            self.assertNotIn("\n", message, what)
            for part in expected:
                self.assertIn(part, message, what)

    def test_portsThatDoNotClash(self) -> None:
        """
        Different ports, different addresses, or a TCP and a UDP port of
        the same number are no clash; nor are ephemeral ports.
        """
        path = writeFile(self, (
            '[tunnel.a]\nrole = "server"\ntcp = "tcp:5073:interface=127.0.0.1"\n'
            'udp = "127.0.0.1:5073"\n'
            '[tunnel.b]\nrole = "server"\ntcp = "tcp:5074:interface=127.0.0.1"\n'
            'udp = "127.0.0.2:5073"\n'
            '[tunnel.c]\nrole = "client"\ntcp = "127.0.0.1:5073"\nudp = "127.0.0.1:0"\n'
            'peer = "127.0.0.1:53"\n'
            '[tunnel.d]\nrole = "client"\ntcp = "127.0.0.1:5073"\nudp = "127.0.0.1:0"\n'
            'peer = "127.0.0.1:53"\n'))
        self.assertEqual(list(loadConfig(path).tunnels), ["a", "b", "c", "d"])

    def test_missingFile(self) -> None:
        """
        A file that cannot be read is a L{ConfigError} of its path and why.
        """
        path = os.path.join(os.path.dirname(writeFile(self, "")), "missing.toml")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(str(caught.exception), f"{path}: cannot read: No such file or directory")

    def test_sameCheckAsCommandLine(self) -> None:
        """
        The file's error is the command line's, in the file's words.
        """
        with self.assertRaises(usage.UsageError) as line:
            tap.ClientOptions().parseOptions(["--tcp", "127.0.0.1:1", "--peer", "127.0.0.1:2",
                                              "--sessions"])
        path = writeFile(self, '[tunnel.c]\nrole = "client"\ntcp = "127.0.0.1:1"\n'
                               'peer = "127.0.0.1:2"\nsessions = true\n')
        with self.assertRaises(ConfigError) as file:
            loadConfig(path)
        self.assertIn("client --sessions opens a connection per UDP source", str(line.exception))
        self.assertEqual(str(file.exception),
                         f"{path}: [tunnel.c] " + str(line.exception).replace("--", ""))

    def test_optionsRefuseBadFile(self) -> None:
        """
        C{run --config} with a bad file: the option parser raises the
        file's error (twistd turns it into one line and status 1).
        """
        path = writeFile(self, '[tunnel.a]\nrole = "server"\n')
        with self.assertRaises(ConfigError):
            tap.Options().parseOptions(["run", "--config", path])
        with self.assertRaises(usage.UsageError):
            tap.Options().parseOptions(["run"])


CONTRIB = os.path.join(REPOSITORY, "contrib")


#: The example files' host names, and what they resolve to in the tests.
HOSTS = {"natbox.example.net": "127.0.0.1", "relay.example.net": "127.0.0.1",
         "pop.example.net": "127.0.0.1"}


class ExampleTests(SynchronousTestCase):
    """
    The example files of C{contrib/config}, which the manual shows.
    """

    def example(self, name: str) -> tuple[str, str]:
        with open(os.path.join(CONTRIB, "config", name)) as file:
            text = file.read()
        local = text
        for host, address in HOSTS.items():
            local = local.replace(host, address)
        return text, local

    def test_inTheManual(self) -> None:
        """
        The how-to of config files shows both example files, included from
        C{contrib/config} (so verbatim) as TOML.
        """
        with open(os.path.join(REPOSITORY, "docs", "howto", "config-file.rst")) as file:
            page = file.read()
        for name in ("natbox.toml", "relay.toml"):
            self.assertIn(f".. literalinclude:: ../../contrib/config/{name}\n"
                          "   :language: toml\n", page)

    def test_commentsSayTheCommandLine(self) -> None:
        """
        Each tunnel's C{#   = udptunnel ...} comment is the command line
        C{--check} says its table stands for; and both files parse.
        """
        for name in ("natbox.toml", "relay.toml"):
            _, local = self.example(name)
            said = [line.split("=", 1)[1].strip() for line in local.splitlines()
                    if line.startswith("#   = udptunnel ")]
            config = loadConfig(writeFile(self, local))
            described = [line.split(": ", 1)[1]
                         for line in describeConfig(config).splitlines()[1:]]
            self.assertEqual(said, described, name)
            self.assertEqual(len(said), 2)

    def test_unitReloads(self) -> None:
        """
        The C{udptunnel-run.service} unit runs the example file, is
        C{Type=notify}, and reloads it with SIGUSR2.
        """
        with open(os.path.join(CONTRIB, "systemd", "udptunnel-run.service")) as file:
            unit = file.read().replace("\\\n", " ")
        values = dict(line.split("=", 1) for line in unit.splitlines()
                      if "=" in line and not line.startswith("#"))
        self.assertIn("udptunnel run --config /etc/udptunnel/natbox.toml", values["ExecStart"])
        self.assertEqual(values["ExecReload"], "/bin/kill -USR2 $MAINPID")
        self.assertEqual(values["Type"], "notify")

    def test_workerTemplate(self) -> None:
        """
        The workers' template unit: its command line parses (instance 1),
        shares the port, and its instances run as one user.
        """
        with open(os.path.join(CONTRIB, "systemd", "udptunnel-client@.service")) as file:
            unit = file.read().replace("\\\n", " ")
        values = dict(line.split("=", 1) for line in unit.splitlines()
                      if "=" in line and not line.startswith("#"))
        argv = values["ExecStart"].replace("%i", "1").replace("relay.example.net", "127.0.0.1")
        words = argv.split()
        options = tap.Options()
        options.parseOptions(words[words.index("udptunnel") + 1:])
        client = options.subOptions
        self.assertTrue(client["sessions"] and client["reuse-port"])
        self.assertEqual(client["metrics"], "tcp:9101:interface=127.0.0.1")
        self.assertEqual(values["User"], "udptunnel-client")
