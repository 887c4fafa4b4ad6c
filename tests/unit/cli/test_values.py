"""
L{udptunnel.cli.values}: the parsers of option values alone: numbers,
C{--proxy} URLs.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support.options import parse
from tests.support.properties import properties
from udptunnel.cli import values
from udptunnel.cli.schema import OPTIONS
from udptunnel.cli.values import parseProxy, secondsUpTo, wholeFrom
from udptunnel.link.viaproxy import (
    Proxy,
)
from udptunnel.sockopts import MAX_USER_TIMEOUT
from udptunnel.tap import (
    Options,
)


class ValidatorTests(SynchronousTestCase):
    """
    The coercers of numeric options, alone.
    """

    def test_wholeFrom(self) -> None:
        """
        L{wholeFrom} takes the whole numbers of its range, the bounds included;
        anything else (out of range, negative, a fraction, empty, a word) is
        refused, with the range and the value.
        """
        coerce = wholeFrom(1, 127)
        self.assertEqual([coerce("1"), coerce("127")], [1, 127])
        for bad in ("0", "128", "-1", "1.5", "", "many", "99999999999"):
            error = self.assertRaises(ValueError, coerce, bad)
            self.assertIn("from 1 to 127", str(error))
            self.assertIn(repr(bad), str(error))

    def test_secondsUpTo(self) -> None:
        """
        L{secondsUpTo} takes durations from 0 to its bound, fractions included;
        a negative, one past the bound, C{nan}, C{inf} or a word is refused,
        with the bound.
        """
        coerce = secondsUpTo(MAX_USER_TIMEOUT)
        self.assertEqual([coerce("0"), coerce("11.5"), coerce("2147483.647")],
                         [0, 11.5, 2147483.647])
        for bad in ("-1", "2147483.648", "3000000", "nan", "inf", "soon"):
            error = self.assertRaises(ValueError, coerce, bad)
            self.assertIn("2147483.647", str(error))

    def test_everyCheckedOptionNamed(self) -> None:
        """
        Every option whose value is checked names itself when the value is
        bad (Twisted's own coercion error says "Parameter type enforcement
        failed", naming none).
        """
        checked = []
        for end, tcp in (("server", "9999"), ("client", "h:1")):
            for option in OPTIONS:
                if end not in option.roles or option.flag or option.name in ("tcp", "udp"):
                    continue
                if option.parse is None or option.parse.__name__ == "_asIs":
                    continue
                argv = [end, "--tcp", tcp, "--udp", "1", f"--{option.name}", "-7"]
                error = self.assertRaises(usage.UsageError, parse, *argv)
                self.assertTrue(str(error).startswith(f"--{option.name}: "), str(error))
                checked.append(option.name)
        self.assertIn("keepalive-idle", checked)
        self.assertIn("stats-interval", checked)
        self.assertIn("allow", checked)


class ParseTests(SynchronousTestCase):
    """
    C{--proxy} URLs.
    """

    def test_http(self) -> None:
        """
        C{http://HOST:PORT} is an HTTP proxy, without credentials.
        """
        self.assertEqual(parseProxy("http://proxy.example:3128"),
                         Proxy("http", "proxy.example", 3128))

    def test_credentials(self) -> None:
        """
        Credentials are percent-decoded, and never shown.
        """
        proxy = parseProxy("socks5://me:p%40ss:word@[::1]:1080")
        self.assertEqual(proxy, Proxy("socks5", "::1", 1080, "me", "p@ss:word"))
        self.assertEqual(str(proxy), "socks5://[::1]:1080")
        self.assertNotIn("word", repr(proxy))

    def test_bad(self) -> None:
        """
        A URL of another scheme or without one, without a port or with one out
        of range, with a path, or with a user but no password is refused.
        """
        for text in ("ftp://h:1", "h:1", "http://h", "http://h:99999", "http://h:1/path",
                     "http://user@h:1", "https://h:1"):
            self.assertRaises(ValueError, parseProxy, text)

    def test_errorHidesPassword(self) -> None:
        """
        The error of a bad proxy URL does not repeat its password.
        """
        with self.assertRaises(ValueError) as caught:
            parseProxy("http://me:secret@h")
        self.assertNotIn("secret", str(caught.exception))

    def test_usageError(self) -> None:
        """
        A bad --proxy is a usage error naming it; --proxy needs --tcp
        HOST:PORT, since the proxy is who connects to it.
        """
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["client", "--tcp", "h:1", "--udp", "1", "--proxy", "h:2"])
        self.assertIn("--proxy", str(caught.exception))
        with self.assertRaises(usage.UsageError) as caught:
            Options().parseOptions(["client", "--tcp", "tcp:h:1", "--udp", "1",
                                    "--proxy", "http://h:2"])
        self.assertIn("--proxy", str(caught.exception))


#: Password characters: letters that no message of parseProxy's own
#: contains (so that one found in a message came from the password), and
#: the URL's delimiters.
_SECRET_LETTERS = "JQXZ"


passwords = st.text(st.sampled_from(_SECRET_LETTERS + ":@/?#%[]"), min_size=1, max_size=12)


class ProxyURLPropertyTests(SynchronousTestCase):
    """
    L{parseProxy}: C{--proxy} URLs with credentials.
    """

    @properties(300)
    @given(st.sampled_from(["http", "socks5", "HTTP"]), passwords,
           st.sampled_from(["proxy.example", "127.0.0.1", "[::1]"]), st.integers(1, 0xFFFF))
    def test_errorsHidePassword(self, scheme: str, password: str, host: str,
                                port: int) -> None:
        """
        C{SCHEME://me:PASSWORD@HOST:PORT}, whatever the password: parsed
        (with that password, when it has none of the URL's delimiters that
        end or break the authority), or refused by a L{ValueError} whose
        message shows no part of the password (no two of its letters in a
        row), and a parsed L{Proxy} shows none either.
        """
        url = f"{scheme}://me:{password}@{host}:{port}"
        secrets = [run for run in _runs(password, _SECRET_LETTERS) if len(run) >= 2]
        try:
            proxy = parseProxy(url)
        except ValueError as e:
            message = str(e)
            for secret in secrets:
                self.assertNotIn(secret, message, f"{url} -> {message}")
            self.assertTrue(set(password) & set("/?#%[]"), (url, message))
            return
        self.assertEqual((proxy.scheme, proxy.user, proxy.port), (scheme.lower(), "me", port))
        if not set(password) & set("/?#%[]"):
            self.assertEqual(proxy.password, password)
        for secret in secrets:
            self.assertNotIn(secret, str(proxy))
            self.assertNotIn(secret, repr(proxy))


def _runs(text: str, letters: str) -> list[str]:
    """
    The maximal runs of C{letters} in C{text}.
    """
    runs, run = [], ""
    for c in text:
        if c in letters:
            run += c
        else:
            runs.append(run)
            run = ""
    return [r for r in [*runs, run] if r]


class RouteValueTests(SynchronousTestCase):
    """
    C{--fwmark} and C{--bind-device}, as written.
    """

    def test_fwmark(self) -> None:
        """
        A mark is decimal or 0x hexadecimal, as C{ip rule} and WireGuard's
        C{FwMark} write it, from 0 (none) to 2**32-1; anything else is
        refused, saying what was expected.
        """
        self.assertEqual(values.fwmark("51820"), 51820)
        self.assertEqual(values.fwmark("0xca6c"), 51820)
        self.assertEqual(values.fwmark("0XCA6C"), 51820)
        self.assertEqual(values.fwmark("4294967295"), 2**32 - 1)
        self.assertEqual(values.fwmark("0"), 0)
        for bad in ("-1", "4294967296", "0x", "ca6c", "51820.0", "", " 1"):
            with self.assertRaises(ValueError) as caught:
                values.fwmark(bad)
            self.assertIn(repr(bad), str(caught.exception))

    def test_interfaceName(self) -> None:
        """
        A device is a name an interface can have: up to 15 characters, no
        slash, colon or blank; whether it exists is the kernel's to say.
        """
        for good in ("eth0", "wg0", "enp0s31f6", "br-lan", "veth1@if2", "a" * 15):
            self.assertEqual(values.interfaceName(good), good)
        for bad in ("", "a" * 16, "eth0/1", "eth0:1", "eth 0", "../x"):
            self.assertRaises(ValueError, values.interfaceName, bad)
