"""
Sessions (C{--sessions}) with real peers: the installed C{twistd} runs both
ends as a user would, an echo server stands for the peer, and many
applications, each from its own source port, talk through the tunnel at
once.

    app i (127.0.0.1, its own port) --> client --sessions 127.0.0.1:U
        (one TCP connection per source) || TCP 127.0.0.1:T
    server --sessions --peer ECHO (one UDP socket per connection) --> echo
    echo --> that connection's socket --> that connection --> app i

Every payload names the application that sent it, so a reply that reaches
the wrong application, or none, shows.  The faults (a server killed with
SIGKILL, thousands of short sessions, a thousand open ones) read what
C{/proc} says about both ends (L{tests.support.system.openFiles},
L{tests.support.system.rssKiB}).  Everything runs on loopback; every loop is
bounded in count and in time.
"""

from __future__ import annotations

import select
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from tests.support.ends import APPS, SessionsTestCase
from tests.support.net import LOCAL, TIMEOUT, freePort, metric, waitFor
from tests.support.processes import TWISTD, lastLine
from tests.support.streams import appSockets, closeAll, exchange, request
from tests.support.system import openFiles, rssKiB

#: How long to wait for a reply that the tunnel is expected to lose.
LOSS_WINDOW = 3.0
#: Short sessions that must leave nothing behind, and those before them
#: that bring each end to its working size.
SHORT_SESSIONS = 3000
WARM_UP = 6000
#: Sessions a second, at most, in the short-session test, and in its
#: warm-up (this machine makes about 2,600 a second).
SHORT_SESSIONS_RATE = 3000
WARM_UP_RATE = 4000
#: The C{--session-idle} of the short-session test: long enough for an echo
#: on a busy machine, short enough to end the sessions soon.
SHORT_SESSION_IDLE = 0.5
#: How much an end's resident size may grow over the L{SHORT_SESSIONS}:
#: 1.6 KiB a session (16 MiB over 10,000, the bound when this test ran that
#: many), so a session that left behind 1.7 KiB, a third of what an open
#: one costs, exceeds it.  Measured here, at about 2,600 sessions a second:
#: the server's resident size grows by some 19 MiB over its first 6,000 to
#: 7,000 sessions, then holds; after the warm-up it grew by 0.2 to 1.4 MiB
#: over the next 3,000 (by up to 1.6 MiB after a warm-up of 4,000 only).
#: The client's settles within 3,000.
SHORT_SESSIONS_RSS_KIB = SHORT_SESSIONS * 16 * 1024 // 10_000
#: Sessions open at once in the memory test, and what each may cost an end
#: (measured: 3.0 KiB on the server, 5.3 KiB on the client).
OPEN_SESSIONS = 1000
OPEN_SESSION_RSS_KIB = 10


def bothEnds(test: SessionsTestCase, *more: str,
             sessions: bool = True) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """
    C{test}'s server (with C{--sessions} unless C{sessions} is false) and
    its session client, each with options C{more}, started at the same
    time: the client connects only once an application sends, so it need
    not wait for the server.  Returns them once both are ready.
    """
    with ThreadPoolExecutor(2) as pool:
        server = pool.submit(test.sessionServer, *more, sessions=sessions)
        client = pool.submit(test.sessionClient, *more)
        return server.result(), client.result()


class CrossTalkTests(SessionsTestCase):
    """
    Many applications at once: with sessions at both ends every reply finds
    the application that asked; a server without sessions mixes them up.
    """

    def test_eachReplyToItsApplication(self) -> None:
        """
        L{APPS} applications, each from its own port, do three rounds of
        request and reply at once, each request sent once (the first is
        queued while its connection is made): every one gets its own reply
        each round, and nothing else.  Both ends count one session per
        application.
        """
        server, client = bothEnds(self)
        apps = self.apps(APPS)
        for round in range(3):
            self.assertOwnReplies(exchange(apps, self.entry, round, TIMEOUT), round)
        # Nothing more arrives: no reply was delivered twice.
        self.assertEqual(exchange(apps, self.entry, 3, 1.0)[0][1:], [])
        self.assertEqual(self.sessions(self.clientMetrics), APPS)
        self.assertEqual(self.sessions(self.serverMetrics), APPS)
        self.assertEqual(len(self.echo.sources), APPS, "one server socket per session")
        self.assertSurvived(server, client)

    def test_withoutServerSessions(self) -> None:
        """
        The same through a server without C{--sessions} fails as the manual
        says: each new connection takes the single link over, so the
        replies, all coming back on one socket, go down whichever
        connection is the link, to its application.  At least some
        applications get another's reply, or none.
        """
        server, client = bothEnds(self, sessions=False)
        apps = self.apps(APPS)
        replies = self.everyReply(apps)
        own = [got == [request(i, 0)] for i, got in enumerate(replies)]
        crossed = sum(1 for i, got in enumerate(replies)
                      if any(reply != request(i, 0) for reply in got))
        lost = sum(1 for got in replies if not got)
        self.assertLess(sum(own), APPS, "every reply reached its application")
        self.assertGreater(crossed + lost, 0)
        self.assertIn("replaces", self.output(server))
        self.assertSurvived(server, client)

    def everyReply(self, apps: list[socket.socket]) -> list[list[bytes]]:
        """
        Application C{i} sends L{request}C{(i, 0)} from C{apps[i]}, once;
        return what each application received, once every request was
        echoed and as many replies arrived (nothing more can come), or else
        after L{LOSS_WINDOW} seconds (the tunnel lost some).
        """
        echoed = self.echo.echoed
        for i, app in enumerate(apps):
            app.sendto(request(i, 0), self.entry)
        replies: list[list[bytes]] = [[] for _ in apps]
        deadline = time.monotonic() + LOSS_WINDOW
        for _ in range(100 * len(apps) + 10_000):
            left = deadline - time.monotonic()
            if left <= 0 or sum(map(len, replies)) == self.echo.echoed - echoed == len(apps):
                break
            ready, _, _ = select.select(apps, [], [], min(left, 0.05))
            for app in ready:
                try:
                    replies[apps.index(app)].append(app.recv(65535))
                except OSError:
                    pass
        return replies


class FaultTests(SessionsTestCase):
    """
    The server killed with sessions open, and sessions by the thousand.
    """

    def test_killServer(self) -> None:
        """
        100 sessions are open when the server is killed with SIGKILL: the
        client ends them all.  Once a new server runs, each application's
        next datagrams reopen its session, and each of the 100 gets its own
        echo again.
        """
        count = 100
        server, client = bothEnds(self)
        apps = self.apps(count)
        self.assertOwnReplies(exchange(apps, self.entry, 0, TIMEOUT), 0)
        self.waitForSessions(self.serverMetrics, count)

        server.send_signal(signal.SIGKILL)
        server.wait(TIMEOUT)
        self.waitForSessions(self.clientMetrics, 0)
        # Traffic while the server is away: sessions that cannot connect.
        # Their first attempts are refused at once (reported some 0.3 s
        # later, when the client's endpoint gives up), and they retry 0.4 to
        # 0.6 s after that: listening again before then, as it does once
        # this short window closes, the server takes every retry rather
        # than some, the others waiting a second more.
        self.assertEqual(exchange(apps, self.entry, 1, 0.2), [[]] * count)

        server = self.sessionServer(name="server-again")
        started = time.monotonic()
        replies = exchange(apps, self.entry, 2, TIMEOUT, resend=0.5)
        resumed = time.monotonic() - started
        # What waited for a connection while the server was away may come
        # first, and resends may be answered twice: every answer must be the
        # application's own.
        wrong = {i: got for i, got in enumerate(replies)
                 if request(i, 2) not in got or set(got) - {request(i, 1), request(i, 2)}}
        self.assertEqual(wrong, {}, f"after the restart ({resumed:.1f} s)")
        self.waitForSessions(self.serverMetrics, count)
        self.assertSurvived(server, client)

    def footprint(self, *processes: subprocess.Popen[bytes]) -> list[tuple[int, int]]:
        """
        The open descriptors and the resident KiB of each process: the
        fewest descriptors of a few samples, as a scrape of its metrics
        holds one for a moment.
        """
        samples: list[list[int]] = [[] for _ in processes]
        for _ in range(5):
            for process, files in zip(processes, samples):
                files.append(openFiles(process.pid))
            time.sleep(0.05)
        return [(min(files), rssKiB(p.pid)) for p, files in zip(processes, samples)]

    def shortSessions(self, count: int, block: int, batch: int = 40,
                      rate: float = 10_000) -> float:
        """
        C{count} sessions of one datagram and its echo, C{batch} at once,
        each batch from fresh sockets on an address of its own, 127.B.x.y
        (B is C{block}), closed once echoed: every source is new, and the
        test holds C{batch} sockets at a time.  A batch stays below the
        server's listen queue (Twisted's default backlog, 50): more
        connections at once overflow it, and each one dropped waits for the
        retransmission of its SYN, a second later.  Returns the seconds it
        took; the batches start at most C{rate} sessions a second.
        """
        started = time.monotonic()
        for number in range(count // batch):
            host = f"127.{block}.{number // 250}.{number % 250 + 1}"
            sockets = appSockets(batch, host)
            try:
                first = number * batch
                self.assertOwnReplies(exchange(sockets, self.entry, number, TIMEOUT,
                                               first=first), number, first=first)
            finally:
                closeAll(sockets)
            pause = started + (number + 1) * batch / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        return time.monotonic() - started

    def opened(self, port: int) -> float | None:
        return metric(self.metrics(port), "udptunnel_sessions_total", 'event="opened"')

    def waitForNoSessions(self) -> None:
        self.waitForSessions(self.clientMetrics, 0)
        self.waitForSessions(self.serverMetrics, 0)

    def waitForFiles(self, process: subprocess.Popen[bytes], count: int) -> None:
        """
        Wait until C{process} has C{count} descriptors open, or fewer (a
        scrape of its metrics holds one for a moment).
        """
        waitFor(lambda: openFiles(process.pid) <= count,
                f"{process.args[4]} to have {count} descriptors open "
                f"(has {openFiles(process.pid)})")

    def test_shortSessionsLeaveNothing(self) -> None:
        """
        L{SHORT_SESSIONS} sessions of one datagram and its echo, each from a
        new source, at most L{SHORT_SESSIONS_RATE} a second with
        C{--session-idle} L{SHORT_SESSION_IDLE}, end and leave nothing
        behind on either end: each end opened and closed every one, has the
        descriptors it had before, and a resident size within
        L{SHORT_SESSIONS_RSS_KIB} of it.

        Each session lingers up to 1.25 times C{--session-idle} (the idle
        check runs every quarter of it): at most about 1,900 sessions are
        open at a time, 2,500 in the warm-up, below C{--max-sessions}.  An
        end's resident size grows over its first few thousand sessions, to
        the high-water mark of its allocator and tables (dicts and sets do
        not shrink), then stays: a warm-up of L{WARM_UP} sessions, at up to
        L{WARM_UP_RATE} a second, brings it there first, so what grows
        afterwards is what sessions leave.
        """
        more = ["--session-idle", str(SHORT_SESSION_IDLE), "--max-sessions", "4000"]
        server, client = bothEnds(self, *more)
        self.shortSessions(WARM_UP, 1, rate=WARM_UP_RATE)
        self.waitForNoSessions()
        (serverFiles, serverRSS), (clientFiles, clientRSS) = self.footprint(server, client)
        openedBefore = self.opened(self.clientMetrics), self.opened(self.serverMetrics)

        self.shortSessions(SHORT_SESSIONS, 2, rate=SHORT_SESSIONS_RATE)
        self.waitForNoSessions()
        for end, port, before in ((client, self.clientMetrics, openedBefore[0]),
                                  (server, self.serverMetrics, openedBefore[1])):
            text = self.metrics(port)
            for event in ("opened", "closed"):
                count = metric(text, "udptunnel_sessions_total", f'event="{event}"')
                self.assertEqual(count, WARM_UP + SHORT_SESSIONS, f"{end.args[4]}: {event}")
            self.assertEqual(before, WARM_UP)
        self.waitForFiles(server, serverFiles)
        self.waitForFiles(client, clientFiles)
        for end, before in ((server, serverRSS), (client, clientRSS)):
            after = rssKiB(end.pid)
            self.assertLess(after - before, SHORT_SESSIONS_RSS_KIB,
                            f"{end.args[4]}: {before} KiB before, {after} KiB after")
        self.assertSurvived(server, client)

    def test_thousandSessions(self) -> None:
        """
        1000 sessions open at once (the default C{--max-sessions} is 1024):
        each end's resident size grows by less than
        L{OPEN_SESSION_RSS_KIB} per session, and each session holds exactly
        its descriptors, a connection on the client, a connection and a UDP
        socket on the server.

        Measured here (twistd, CPython 3.11): the server grew by 2.8 MiB for
        960 sessions (3.0 KiB each), the client by 5.0 MiB (5.3 KiB each).
        """
        server, client = bothEnds(self)
        base = 40
        self.shortSessions(base, 4)
        self.waitForSessions(self.serverMetrics, base)
        self.waitForSessions(self.clientMetrics, base)
        (serverFiles, serverRSS), (clientFiles, clientRSS) = self.footprint(server, client)

        added = OPEN_SESSIONS - base
        self.shortSessions(added, 5)
        self.waitForSessions(self.serverMetrics, OPEN_SESSIONS)
        self.waitForSessions(self.clientMetrics, OPEN_SESSIONS)
        waitFor(lambda: openFiles(server.pid) == serverFiles + 2 * added,
                f"{serverFiles} + 2 x {added} descriptors on the server "
                f"(has {openFiles(server.pid)})")
        waitFor(lambda: openFiles(client.pid) == clientFiles + added,
                f"{clientFiles} + {added} descriptors on the client "
                f"(has {openFiles(client.pid)})")
        for end, before in ((server, serverRSS), (client, clientRSS)):
            grown = rssKiB(end.pid) - before
            self.assertLess(grown, OPEN_SESSION_RSS_KIB * added,
                            f"{end.args[4]}: {grown} KiB more for {added} sessions")
        self.assertSurvived(server, client)


class WorkersTests(SessionsTestCase):
    """
    Two workers of each end, as the manual shows (docs/howto/workers.rst):
    servers sharing the TCP port, clients sharing the UDP port the
    applications send to.
    """

    def worker(self, end: str, index: int, metricsPort: int) -> subprocess.Popen[bytes]:
        if end == "server":
            argv = ["server", "--sessions", "--reuse-port",
                    "--tcp", f"tcp:{self.tcp}:interface={LOCAL}",
                    "--peer", f"{LOCAL}:{self.echo.port}"]
            ready = "listening for the TCP link on"
        else:
            argv = ["client", "--sessions", "--reuse-port", "--tcp", f"{LOCAL}:{self.tcp}",
                    "--udp", f"{LOCAL}:{self.clientUDP}"]
            ready = "UDP bound on"
        process = self.spawn(f"{end}{index}", TWISTD, "-n", "--pidfile=", "udptunnel", *argv,
                             "--metrics", f"tcp:{metricsPort}:interface={LOCAL}")
        self.waitForOutput(process, ready)
        self.waitForOutput(process, "serving metrics on")
        return process

    def test_eachReplyToItsApplication(self) -> None:
        """
        L{APPS} applications, each from its own port, do three rounds of
        request and reply at once through two client workers and two server
        workers: every one gets its own reply each round, and nothing else.
        Each end's sessions add up to one per application, and each worker
        has some (the kernel spread them: with 50 sources, all on one worker
        has a chance of 2 in 2**50).
        """
        metrics = {(end, i): freePort() for end in ("server", "client") for i in (1, 2)}
        processes = [self.worker(end, i, port) for (end, i), port in metrics.items()]
        apps = self.apps(APPS)
        for round in range(3):
            self.assertOwnReplies(exchange(apps, self.entry, round, TIMEOUT), round)
        # Each worker answers from the shared address and port, the one
        # each application sent to (a connected application accepts no other).
        sources = set()
        for app in apps:
            app.sendto(b"from where?", self.entry)
            ready, _, _ = select.select([app], [], [], TIMEOUT)
            self.assertTrue(ready, "no reply")
            sources.add(app.recvfrom(65535)[1])
        self.assertEqual(sources, {self.entry})
        for end in ("server", "client"):
            def counts(end: str = end) -> list[float | None]:
                return [self.sessions(metrics[end, i]) for i in (1, 2)]

            waitFor(lambda: sum(c or 0 for c in counts()) == APPS,
                    f"{APPS} {end} sessions in all (last: {counts()})")
            self.assertTrue(all(counts()), f"a {end} worker with no session: {counts()}")
        self.assertSurvived(*processes)

    def test_workerWithoutTheOption(self) -> None:
        """
        A client started without C{--reuse-port} on a worker's port cannot
        bind it: status 1 and one line saying so, no traceback.
        """
        self.worker("client", 1, freePort())
        result = subprocess.run(
            [TWISTD, "-n", "--pidfile=", "udptunnel", "client", "--sessions",
             "--tcp", f"{LOCAL}:{self.tcp}", "--udp", f"{LOCAL}:{self.clientUDP}"],
            check=False, cwd=self.directory, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertNotIn("Traceback", result.stdout)
        self.assertIn(str(self.clientUDP), lastLine(result.stdout))



