"""A real control plane for end-to-end tests: etcd + kube-apiserver (+ kube-controller-manager).

Like controller-runtime's envtest: no kubelet, so Deployments never get pods, but
everything the API server does itself is real — CRD schemas and CEL, admission
webhooks, RBAC, status subresources, garbage collection (controller-manager).
Certificates (CA, serving, admin client in system:masters, service-account keys)
are generated here with `cryptography`; the binaries come from
`tests/controlplane/build.sh`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))


def _cert(subject: x509.Name, key: rsa.RSAPrivateKey, issuer: x509.Name,
          issuer_key: rsa.RSAPrivateKey, *, ca: bool = False,
          sans: list[x509.GeneralName] | None = None, client: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH if client else \
            x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass
class ControlPlane:
    bin_dir: Path
    workdir: Path
    etcd_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    # ------------------------------------------------------------- certificates

    def _pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca_key = _key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cadml-test-ca")])
        ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
        _pem(ca, pki / "ca.crt")
        srv_key = _key()
        srv = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
                    srv_key, ca_name, ca_key,
                    sans=[x509.DNSName("localhost"),
                          x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                          x509.IPAddress(ipaddress.ip_address("10.0.0.1"))])
        _pem(srv, pki / "apiserver.crt")
        _write_key(srv_key, pki / "apiserver.key")
        adm_key = _key()
        adm = _cert(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cadml-admin"),
                               x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters")]),
                    adm_key, ca_name, ca_key, client=True)
        _pem(adm, pki / "admin.crt")
        _write_key(adm_key, pki / "admin.key")
        sa_key = _key()
        _write_key(sa_key, pki / "sa.key")
        (pki / "sa.pub").write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self.kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {self.url}
    certificate-authority: {pki / 'ca.crt'}
users:
- name: admin
  user:
    client-certificate: {pki / 'admin.crt'}
    client-key: {pki / 'admin.key'}
contexts:
- name: test
  context: {{cluster: test, user: admin}}
current-context: test
""")

    def token_kubeconfig(self, token: str, path: Path) -> Path:
        """A kubeconfig for the same server that authenticates with a bearer token."""
        path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {self.url}
    certificate-authority: {self.workdir / 'pki' / 'ca.crt'}
users:
- name: token
  user:
    token: {token}
contexts:
- name: test
  context: {{cluster: test, user: token}}
current-context: test
""")
        return path

    def route_service(self, namespace: str, name: str, port: int, target: int) -> str:
        """A Service without selector whose endpoints are this host's own address at
        `target` (as a pod's would be): how the API server reaches in-cluster webhooks.
        Returns the host address used."""
        import json
        import socket

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: picks the outward address
            ip = str(s.getsockname()[0])
        if ip.startswith("127."):
            raise RuntimeError("no non-loopback IPv4 address to use as a Service endpoint")
        meta = {"name": name, "namespace": namespace}
        docs = [
            {"apiVersion": "v1", "kind": "Service", "metadata": meta,
             "spec": {"ports": [{"name": "webhook", "port": port, "targetPort": target}]}},
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta,
             "subsets": [{"addresses": [{"ip": ip}],
                          "ports": [{"name": "webhook", "port": target}]}]},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {**meta, "name": f"{name}-host",
                          "labels": {"kubernetes.io/service-name": name}},
             "addressType": "IPv4", "ports": [{"name": "webhook", "port": target}],
             "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]},
        ]
        self.kubectl("create", "namespace", namespace, check=False)
        self.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))
        return ip

    # ------------------------------------------------------------- processes

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen([str(self.bin_dir / args[0]), *args[1:]],
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def start_etcd(self) -> None:
        self._spawn("etcd", ["etcd", f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                             f"--listen-peer-urls=http://127.0.0.1:{free_port()}",
                             f"--data-dir={self.workdir / 'etcd'}"])

    def start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        self._spawn("kube-apiserver", [
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--secure-port={self.api_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.0.0.0/16", "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
            "--authorization-mode=RBAC",
            f"--service-account-issuer=https://127.0.0.1:{self.api_port}/",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # no kube-proxy here: reach Services (webhooks) through their endpoints
            "--enable-aggregator-routing=true",
        ])

    def start_controller_manager(self) -> None:
        pki = self.workdir / "pki"
        self._spawn("kube-controller-manager", [
            "kube-controller-manager", f"--kubeconfig={self.kubeconfig}",
            "--controllers=garbagecollector,namespace", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
        ])

    def wait_ready(self, timeout: float = 90.0) -> None:
        pki = self.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self.procs.get("kube-apiserver")
            if proc is not None and proc.poll() is not None:
                raise RuntimeError("kube-apiserver exited:\n" + self.log_tail("kube-apiserver"))
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.5)
        raise RuntimeError(f"kube-apiserver not ready after {timeout}s ({last}):\n"
                           + self.log_tail("kube-apiserver"))

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._pki()
        self.start_etcd()
        self.start_apiserver()
        self.wait_ready()
        self.start_controller_manager()

    def restart_apiserver(self) -> None:
        self._stop("kube-apiserver")
        self.start_apiserver()
        self.wait_ready()

    def clear_admission(self) -> None:
        """Remove cadml's admission webhook configurations. They are persistent (they
        outlive the operator that registered them, by design), so a module that starts
        its own operator, or none, begins without an earlier module's: otherwise its
        changes go to a dead webhook, or one whose CA the new operator has not yet put
        in place."""
        self.kubectl("delete", "validatingwebhookconfiguration,mutatingwebhookconfiguration",
                     "admission.cadml.io", "--ignore-not-found")

    def kubectl(self, *args: str, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.bin_dir / "kubectl"), *args], input=stdin, text=True,
                              capture_output=True, env=self.env(), timeout=120,
                              check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self._stop(name)


def find_binaries() -> Path | None:
    """The built control plane named by $CADML_CONTROLPLANE_BIN (.ci/run sets it from
    `tests/controlplane/build.sh`; locally: export CADML_CONTROLPLANE_BIN=$(… | tail -1))."""
    given = os.environ.get("CADML_CONTROLPLANE_BIN")
    if given and (Path(given) / "kube-apiserver").exists():
        return Path(given)
    return None
