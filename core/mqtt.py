"""The MQTT adapter: the only module that imports paho (2.x, VERSION2 callbacks).

``Broker`` says where and how to connect (TLS, username/password); ``Will``
is the Last Will; ``MqttClient`` connects, keeps its subscriptions across
reconnects, dispatches messages to handlers and turns publish acks into
futures. Failures are the adapter's own errors (``BrokerUnavailable`` names
host:port). With ``manual_ack`` a QoS 1 message is acknowledged (PUBACK) only
when its handler's ``ack()`` is called, so a receiver that stores what it hears
acks it once stored: a message it had not stored when it died is redelivered
through its persistent session. On MQTT 5 ``max_packet_size`` tells the broker the largest packet
the client accepts, so an oversized message is dropped by the broker instead
of being buffered whole here; ``ensure_loop()`` restarts a network loop that
died (paho's thread ends on an exception such as MemoryError).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from core.errors import BrokerUnavailable, MqttError, NotConnected, PublishTimeout

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]
Ack = Callable[[], None]  # acknowledges one received message (a manual_ack client)
AckHandler = Callable[[str, bytes, Ack], None]  # a manual_ack client's handlers
SESSION_EXPIRY_S = 7 * 24 * 3600  # MQTT 5: keep a persistent session a week


@dataclass(frozen=True)
class Broker:
    """Where to connect. ``from_url('mqtts://user@host:8883')`` parses a URL."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive: int = 30
    protocol: str = "3.1.1"

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("broker host is empty")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"broker port {self.port} outside 1..65535")
        if self.protocol not in ("3.1.1", "5"):
            raise ValueError(f"MQTT protocol {self.protocol!r}: use '3.1.1' or '5'")
        if not 5 <= self.keepalive <= 3600:
            raise ValueError(f"keepalive {self.keepalive}s outside 5..3600")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, **overrides: object) -> Broker:
        """mqtt://, tcp:// (1883) or mqtts://, ssl:// (8883); user:password@ optional."""
        if "://" not in url:
            raise ValueError(f"broker URL {url!r} has no scheme: write mqtts://{url} (TLS, "
                             f"as broker-config's listeners) or mqtt://{url} (plain TCP)")
        parsed = urlparse(url)
        scheme = parsed.scheme.lower()
        if scheme not in ("mqtt", "tcp", "mqtts", "ssl", "tls"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        tls = scheme in ("mqtts", "ssl", "tls")
        try:
            port = parsed.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ValueError(f"broker URL {url!r}: {exc}") from None
        if not parsed.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        kwargs: dict[str, object] = {"host": parsed.hostname, "port": port, "tls": tls}
        if parsed.username:
            kwargs["username"] = unquote(parsed.username)
        if parsed.password:
            kwargs["password"] = unquote(parsed.password)
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class PublishFuture:
    """A publish in flight: ``wait(timeout)`` returns when the broker acked it."""

    def __init__(self, mid: int, future: Future[None]) -> None:
        self.mid = mid
        self._future = future

    def done(self) -> bool:
        return self._future.done()

    def wait(self, timeout: float | None = None) -> None:
        try:
            self._future.result(timeout)
        except FutureTimeout:
            raise PublishTimeout(f"publish {self.mid} not acknowledged in {timeout}s") from None

    def add_done_callback(self, fn: Callable[[PublishFuture], None]) -> None:
        self._future.add_done_callback(lambda _f: fn(self))


_RC_TEXT = {
    1: "unacceptable protocol version",
    2: "client id rejected",
    3: "server unavailable",
    4: "bad username or password",
    5: "not authorised",
}


class MqttClient:
    """A paho client with futures for acks, remembered subscriptions and hooks."""

    def __init__(
        self,
        broker: Broker,
        client_id: str,
        *,
        clean_session: bool = False,
        will: Will | None = None,
        max_inflight: int = 64,
        max_packet_size: int | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.loop_failures = 0  # network loops that died and were restarted
        version = (MQTTProtocolVersion.MQTTv5 if broker.protocol == "5"
                   else MQTTProtocolVersion.MQTTv311)
        kwargs: dict[str, object] = {"protocol": version}
        self._connect_props: Properties | None = None
        if version == MQTTProtocolVersion.MQTTv311:
            kwargs["clean_session"] = clean_session
        else:
            props = Properties(PacketTypes.CONNECT)
            if max_packet_size is not None:
                props.MaximumPacketSize = int(max_packet_size)
            if not clean_session:
                props.SessionExpiryInterval = SESSION_EXPIRY_S
            self._connect_props = props
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   manual_ack=manual_ack, **kwargs)
        self._manual_ack = manual_ack
        self._generation = 0  # connections so far: an ack names a message of one of them
        self._clean_session = clean_session
        self._client.max_inflight_messages_set(max_inflight)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(min_delay=1, max_delay=4)
        if broker.username is not None:
            self._client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self._client.tls_set(
                ca_certs=broker.ca_file,
                certfile=broker.cert_file,
                keyfile=broker.key_file,
                cert_reqs=ssl.CERT_NONE if broker.insecure else ssl.CERT_REQUIRED,
            )
            if broker.insecure:
                self._client.tls_insecure_set(True)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._lock = threading.Lock()
        self._pending: dict[int, Future[None]] = {}
        self._early_acks: set[int] = set()
        self._subscriptions: dict[str, tuple[int, Handler | AckHandler]] = {}
        self._on_connect_hooks: list[Callable[[], None]] = []
        self._on_disconnect_hooks: list[Callable[[], None]] = []
        self._connected = threading.Event()
        self._connack: Future[int] = Future()
        self._suback_mids: dict[int, list[Future[None]]] = {}
        self._subscribing: dict[str, list[Future[None]]] = {}  # filter -> waiting for a SUBACK
        self._early_subacks: set[int] = set()
        self._started = False
        self._first_subscribed: Future[None] = Future()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = self._on_subscribe  # the same bookkeeping by mid
        self._client.on_connect_fail = self._on_connect_fail
        self._fail_hint: str | None = None  # the last connect failure logged
        self._log_failures = True

    # -- lifecycle --------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def on_connect(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` (in the network thread) after every successful connect."""
        self._on_connect_hooks.append(hook)

    def on_disconnect(self, hook: Callable[[], None]) -> None:
        self._on_disconnect_hooks.append(hook)

    def connect(self, timeout: float = 10.0, *, wait: bool = True) -> None:
        """Connect and start the network thread (which reconnects on its own).

        With ``wait`` a broker that cannot be reached is a ``BrokerUnavailable``
        naming host:port; without it the client keeps trying in the background.
        """
        b = self.broker
        self._log_failures = not wait  # a waiting caller gets the failure as its error
        if wait:
            try:
                self._client.connect(b.host, b.port, keepalive=b.keepalive,
                                     **self._v5_connect_args())
            except (OSError, ssl.SSLError) as exc:
                raise BrokerUnavailable(
                    f"cannot connect to MQTT broker at {b.address}: "
                    f"{connect_hint(b) or exc}") from None
            self._client.loop_start()
            self._started = True
            try:
                rc = self._connack.result(timeout)
            except (FutureTimeout, BrokerUnavailable) as exc:
                self.close(0)
                hint = connect_hint(b)
                what = (f"did not answer in {timeout}s" if isinstance(exc, FutureTimeout)
                        else "closed the connection")
                raise BrokerUnavailable(f"MQTT broker at {b.address} {what}"
                                        f"{': ' + hint if hint else ''}") from None
            self._log_failures = True
            if rc != 0:
                self.close(0)
                text = _RC_TEXT.get(rc, f"code {rc}")
                raise BrokerUnavailable(f"MQTT broker at {b.address} refused: {text}"
                                        f"{refused_hint(rc)}")
            # subscriptions are in place before the caller publishes anything
            try:
                self._first_subscribed.result(timeout)
            except FutureTimeout:
                self.close(0)
                raise BrokerUnavailable(
                    f"MQTT broker at {b.address} did not acknowledge the subscriptions") from None
        else:
            self._client.connect_async(b.host, b.port, keepalive=b.keepalive,
                                       **self._v5_connect_args())
            self._client.loop_start()
            self._started = True

    def _v5_connect_args(self) -> dict[str, object]:
        if self._connect_props is None:
            return {}
        return {"properties": self._connect_props,
                "clean_start": bool(self._clean_session)}

    def loop_alive(self) -> bool:
        """Whether paho's network thread is running."""
        name = f"paho-mqtt-client-{self.client_id}"
        return any(t.name == name and t.is_alive() for t in threading.enumerate())

    def ensure_loop(self) -> bool:
        """Restart a network loop that died; True if it had to (call it periodically).

        paho's thread ends on any exception (a MemoryError while reading a
        huge packet, say) and the client would sit deaf; here it reconnects.
        """
        if not self._started or self.loop_alive():
            return False
        self.loop_failures += 1
        log.error("the MQTT network loop died: reconnecting to %s", self.broker.address)
        self._connected.clear()
        try:
            self._client.reconnect()
        except (OSError, ssl.SSLError) as exc:
            log.warning("reconnect to %s failed (will retry): %s", self.broker.address, exc)
        self._client.loop_start()
        return True

    def wait_connected(self, timeout: float | None = None) -> bool:
        return self._connected.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Wait (at most ``timeout``) for QoS 1 publishes in flight, then disconnect.

        Disconnecting is clean (no Last Will). What must arrive (a cleared
        retained chunk, a cancel) is acknowledged by the broker before the
        connection goes; a publish still unacknowledged after ``timeout``
        (the broker is away) is given up, and the count is logged.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            pending = list(self._pending.values())
        for fut in pending:
            left = deadline - time.monotonic()
            if left <= 0 or not self.connected:
                break
            try:
                fut.result(left)
            except (FutureTimeout, MqttError):
                break
        with self._lock:
            lost = sum(1 for f in self._pending.values() if not f.done())
        if lost:
            log.warning("closing the connection to %s with %d publish(es) unacknowledged",
                        self.broker.address, lost)
        try:
            self._client.disconnect()
        except Exception:  # noqa: BLE001 - closing must not raise
            pass
        if self._started:
            self._client.loop_stop()
            self._started = False
        self._connected.clear()

    # -- operations -------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler | AckHandler, qos: int = 1
                  ) -> Future[None]:
        """Subscribe now (if connected) and again after every reconnect.

        A ``manual_ack`` client calls ``handler(topic, payload, ack)``; the others
        ``handler(topic, payload)``.

        The future completes when the broker acknowledges the subscription
        (SUBACK): now, or after the next connect. Retained messages for the
        filter arrive after it; a message published after it reaches the handler.
        """
        fut: Future[None] = Future()
        with self._lock:
            self._subscriptions[topic_filter] = (qos, handler)
            self._subscribing.setdefault(topic_filter, []).append(fut)
        if self.connected:
            rc, mid = self._client.subscribe(topic_filter, qos)
            if rc == paho.MQTT_ERR_SUCCESS:
                with self._lock:
                    waiting = self._subscribing.pop(topic_filter, [])
                    if mid in self._early_subacks:  # acked before we got here
                        self._early_subacks.discard(mid)
                    else:
                        self._suback_mids.setdefault(mid, []).extend(waiting)
                        waiting = []
                for f in waiting:
                    f.set_result(None)
        return fut

    def unsubscribe(self, topic_filter: str) -> Future[None]:
        """Unsubscribe; the future completes on the broker's UNSUBACK (at once when not
        connected). The broker handles a client's packets in order, so by then it also
        has every ack sent before: a close after it loses none of them."""
        fut: Future[None] = Future()
        with self._lock:
            self._subscriptions.pop(topic_filter, None)
        rc, mid = (self._client.unsubscribe(topic_filter) if self.connected
                   else (paho.MQTT_ERR_NO_CONN, None))
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            fut.set_result(None)
            return fut
        with self._lock:
            early = mid in self._early_subacks
            if early:
                self._early_subacks.discard(mid)
            else:
                self._suback_mids[mid] = [fut]
        if early:
            fut.set_result(None)
        return fut

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
        *, require_connection: bool = False,
    ) -> PublishFuture:
        """Publish; the future completes when the broker acks (QoS 0: when sent).

        While disconnected paho keeps QoS>0 messages and sends them after the
        reconnect, unless ``require_connection`` (then ``NotConnected``).
        """
        if require_connection and not self.connected:
            raise NotConnected(f"not connected to MQTT broker at {self.broker.address}")
        fut: Future[None] = Future()
        # paho's own lock is taken inside publish(): never hold ours around it
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            fut.set_exception(MqttError(f"publish to {topic} failed: "
                                        f"{paho.error_string(info.rc)}"))
            return PublishFuture(info.mid, fut)
        with self._lock:
            if info.mid in self._early_acks:  # acked before we got here
                self._early_acks.discard(info.mid)
                acked = True
            else:
                self._pending[info.mid] = fut
                acked = False
        if acked:
            fut.set_result(None)
        return PublishFuture(info.mid, fut)

    # -- paho callbacks (network thread) -----------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        rc = int(reason_code.value) if hasattr(reason_code, "value") else int(reason_code)
        if rc == 0x80 or rc >= 0x80:  # MQTT 5 failure codes
            rc = 5
        if rc != 0:
            self._log_failure(f"refused: {_RC_TEXT.get(rc, reason_code)}{refused_hint(rc)}")
            if not self._connack.done():
                self._connack.set_result(rc)
            return
        self._generation += 1
        self._connected.set()
        self._fail_hint = None
        log.debug("%s connected to %s (session present: %s)", self.client_id,
                  self.broker.address, getattr(flags, "session_present", None))
        with self._lock:
            subs = list(self._subscriptions.items())
        subscribed: Future[None] = Future()
        if subs:
            _rc, mid = client.subscribe([(t, q) for t, (q, _h) in subs])
            with self._lock:
                waiting = [subscribed]
                for t, _sub in subs:
                    waiting.extend(self._subscribing.pop(t, []))
                self._suback_mids[mid] = waiting
        else:
            subscribed.set_result(None)
        if not self._connack.done():
            self._first_subscribed = subscribed
            self._connack.set_result(rc)
        for hook in list(self._on_connect_hooks):
            try:
                hook()
            except Exception:  # noqa: BLE001 - a hook must not kill the network thread
                log.exception("on_connect hook failed")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            log.info("disconnected from %s: %s", self.broker.address, reason_code)
        elif not self._connack.done():
            if self._log_failures:
                self._log_failure(connect_hint(self.broker)
                                  or f"connection closed ({reason_code})")
            else:
                self._connack.set_exception(BrokerUnavailable(str(reason_code)))
        for hook in list(self._on_disconnect_hooks):
            try:
                hook()
            except Exception:  # noqa: BLE001
                log.exception("on_disconnect hook failed")

    def _on_connect_fail(self, client, userdata) -> None:  # noqa: ANN001
        if self._log_failures:
            self._log_failure(connect_hint(self.broker) or "connection failed")

    def _log_failure(self, hint: str) -> None:
        """A warning per new reason the (re)connection fails; repeats go to debug."""
        if not self._log_failures:
            return
        level = logging.DEBUG if hint == self._fail_hint else logging.WARNING
        self._fail_hint = hint
        log.log(level, "cannot connect to MQTT broker at %s (retrying): %s",
                self.broker.address, hint)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        with self._lock:
            fut = self._pending.pop(mid, None)
            if fut is None:
                self._early_acks.add(mid)
                return
        if not fut.done():
            fut.set_result(None)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # noqa: ANN001
        with self._lock:
            if mid in self._suback_mids:
                waiting = self._suback_mids.pop(mid)
            else:
                waiting = []
                self._early_subacks.add(mid)
        for fut in waiting:
            if not fut.done():
                fut.set_result(None)
        for rc in reason_codes:
            if getattr(rc, "is_failure", False):
                log.warning("broker %s refused a subscription: %s", self.broker.address, rc)

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        ack = self._acker(message) if self._manual_ack else None
        with self._lock:
            subs = list(self._subscriptions.items())
        for topic_filter, (_qos, handler) in subs:
            if paho.topic_matches_sub(_unshared(topic_filter), message.topic):
                try:
                    if ack is None:
                        handler(message.topic, message.payload)  # type: ignore[call-arg]
                    else:
                        handler(message.topic, message.payload, ack)  # type: ignore[call-arg]
                except Exception:  # noqa: BLE001 - never let one bad message kill the client
                    log.exception("handler for %s failed", message.topic)
                    if ack is not None:
                        ack()  # redelivering it would fail again
                return
        if ack is not None:
            ack()

    def _acker(self, message) -> Ack:  # noqa: ANN001
        """The ack of ``message``: a PUBACK on the connection it came by. After a reconnect
        the broker redelivers it and that copy's ack counts (packet ids are per connection)."""
        mid, qos, generation = message.mid, message.qos, self._generation

        def ack() -> None:
            if qos and generation == self._generation and self.connected:
                self._client.ack(mid, qos)
        return ack


# what OpenSSL says when the other end is not a TLS server at all
_NOT_TLS = ("WRONG_VERSION_NUMBER", "record layer failure", "UNEXPECTED_EOF", "EOF occurred",
            "unknown protocol", "packet length too long", "http request")


def refused_hint(rc: int) -> str:
    """What to try when the broker's CONNACK refuses with ``rc``."""
    if rc in (4, 5):
        return (": check the user name and password file (broker-config writes the host's, "
                "each device's is in its bundle) or the client certificate")
    return ""


def connect_hint(broker: Broker, timeout: float = 3.0) -> str:
    """One line on why ``broker`` cannot be reached and what to try ('' if no cause is seen).

    Probes the port itself: nothing listening, a name that does not resolve, a
    plain port given mqtts:// (or a TLS port mqtt://), a certificate the CA
    file does not verify or that is for another host name.
    """
    addr = broker.address
    try:
        sock = socket.create_connection((broker.host, broker.port), timeout=timeout)
    except socket.gaierror:
        return f"cannot resolve the host name {broker.host!r}"
    except ConnectionRefusedError:
        return (f"nothing listens on {addr} (connection refused): is the broker running, "
                "is the port right?")
    except TimeoutError:
        return f"no answer from {addr} in {timeout:g}s: a firewall, or the wrong host?"
    except OSError as exc:
        return f"cannot reach {addr}: {exc.strerror or exc}"
    with sock:
        sock.settimeout(timeout)
        if broker.tls:
            ctx = ssl.create_default_context(cafile=broker.ca_file)
            if broker.insecure:
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            if broker.cert_file:
                try:
                    ctx.load_cert_chain(broker.cert_file, broker.key_file)
                except (OSError, ssl.SSLError) as exc:
                    return f"cannot load the client certificate {broker.cert_file}: {exc}"
        else:  # does the port speak TLS though the URL says mqtt://?
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        try:
            with ctx.wrap_socket(sock, server_hostname=broker.host) as tls:
                if broker.tls and not broker.cert_file:  # TLS 1.3 asks for it after the handshake
                    tls.settimeout(min(timeout, 1.0))
                    try:
                        tls.recv(1)
                    except TimeoutError:
                        pass
        except ssl.SSLCertVerificationError as exc:
            if not broker.tls:
                return ""
            if "match" in str(exc.verify_message) or "mismatch" in str(exc):
                return (f"the broker's certificate is not for {broker.host!r}: connect by a "
                        "name it was made for (broker-config --server-name)")
            return (f"TLS verification failed ({exc.verify_message}): give the CA that signed "
                    "the broker's certificate with --ca-file (broker-config writes "
                    "DIR/tls/ca.crt)")
        except (ssl.SSLError, OSError) as exc:
            if not broker.tls:
                return ""
            text = str(exc)
            if isinstance(exc, ssl.SSLError) and not any(m in text for m in _NOT_TLS):
                if "HANDSHAKE_FAILURE" in text or "CERTIFICATE_REQUIRED" in text:
                    return ("the broker refused the TLS handshake: it may want a client "
                            "certificate (--cert-file and --key-file)")
                return f"the TLS handshake with {addr} failed: {exc.reason or text}"
            return f"{addr} does not speak TLS: use mqtt://{addr}, or the TLS port"
        if not broker.tls:
            return f"{addr} speaks TLS: use mqtts://{addr} (and --ca-file)"
    return ""


def _unshared(topic_filter: str) -> str:
    """The filter a shared subscription ``$share/<group>/<filter>`` matches topics with."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else topic_filter
    return topic_filter
