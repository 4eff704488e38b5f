"""The proof of who we are that the node helper asks for (docs/security.md).

The API server's pod proxy drops our Authorization header, so the helper cannot see who we are.
So we let the API server write it down: once per command we create a CertificateSigningRequest
whose signerName carries the sha256 of a random secret. The API server fills in our user name,
groups and uid from whatever credentials the kubeconfig has (token, client certificate, exec
plugin) and never lets the spec change. Every helper call then carries

    X-Cedana-Caller: CSR_NAME        X-Cedana-Proof: SECRET

and the helper reads the CSR, checks the secret, and asks the API server (SubjectAccessReview)
whether that user may do what the call does. Nobody signs the CSR: the signer name is ours, and
the key of the embedded request was thrown away when it was made. The API server's CSR cleaner
removes it after a day; the helper stops accepting it after 15 minutes.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from kubectl_cedana.contract import (
    CALLER_HEADER,
    HELPER_NAMESPACE,
    MANAGED_BY,
    PROOF_HEADER,
    PROOF_TTL_S,
    SIGNER_PREFIX,
    is_open,
    proof_digest,
)
from kubectl_cedana.errors import CedanaError, PermissionDenied
from kubectl_cedana.kube import KubeClient, can_i_command

CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
#: the helper accepts a proof for PROOF_TTL_S; make a new one a little before
RENEW_AFTER_S = PROOF_TTL_S - 2 * 60

# A PKCS#10 request (EC P-256, CN "kubectl-cedana caller proof (no signer; key discarded)").
# Its private key was deleted right after `openssl req` made it: even if someone signed it, the
# certificate would be useless. Only the CSR object's metadata and signerName matter to us.
_REQUEST_PEM = b"""-----BEGIN CERTIFICATE REQUEST-----
MIH9MIGjAgEAMEExPzA9BgNVBAMMNmt1YmVjdGwtY2VkYW5hIGNhbGxlciBwcm9v
ZiAobm8gc2lnbmVyOyBrZXkgZGlzY2FyZGVkKTBZMBMGByqGSM49AgEGCCqGSM49
AwEHA0IABBdD5Cb7b+JtA8AjIuql2WeTtodQvb+GG3AXQsX7jHBAZU7JCoSqJoV6
EWvtFGHsVODWz0YQA63vmZ7LYS+ed1CgADAKBggqhkjOPQQDAgNJADBGAiEA2iyU
kFS69ILreaoTDMJJXLy8WIkGuAc+u9YgTMrHkn0CIQCYxlVtOmijRpa3zQ+bZyL9
8d2rYVz4oSj4AKysIVbGxw==
-----END CERTIFICATE REQUEST-----
"""


def proof_request(digest: str) -> dict[str, Any]:
    """The CertificateSigningRequest that records who we are for the secret with `digest`."""
    import base64  # here, not at the top: `kubectl cedana --help` makes no proof

    return {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "cedana-caller-",
                     "labels": dict(MANAGED_BY)},
        "spec": {"request": base64.b64encode(_REQUEST_PEM).decode(),
                 "signerName": SIGNER_PREFIX + digest, "usages": ["client auth"]},
    }


class CallerProof:
    """This command's proof: made on the first helper call that needs one, renewed when old."""

    def __init__(self, kube: KubeClient) -> None:
        self.kube = kube
        self._lock = threading.Lock()
        self._secret = ""
        self._name = ""
        self._made = 0.0

    def _make(self) -> None:
        import secrets

        secret = secrets.token_urlsafe(32)
        try:
            created = self.kube.request("POST", CSR_PATH,
                                        body=proof_request(proof_digest(secret)))
        except PermissionDenied as exc:
            raise self._denied(exc) from exc
        name = str(((created or {}).get("metadata") or {}).get("name") or "")
        if not name:
            raise CedanaError("the API server created a CertificateSigningRequest without a name")
        self._secret, self._name, self._made = secret, name, time.monotonic()

    def _denied(self, exc: PermissionDenied) -> PermissionDenied:
        """The refusal, naming every permission we know to be missing."""
        needed = ["create certificatesigningrequests.certificates.k8s.io"]
        try:
            proxy_ok, _ = self.kube.access_review("create", "pods", namespace=HELPER_NAMESPACE,
                                                  subresource="proxy")
        except CedanaError:
            proxy_ok = True  # cannot tell: name only what we know
        if not proxy_ok:
            needed.append(f"create pods/proxy in namespace {HELPER_NAMESPACE}")
        quoted = " and ".join(f'"{p}"' for p in needed)
        return PermissionDenied(
            f"permission denied: to reach the cedana helpers you need {quoted} (ClusterRole "
            f"cedana-caller, Role cedana-helper-client; API server: "
            f"{exc.api_status.get('message') or exc.message})",
            permission="; ".join(needed),
            hint="check with: " + "; ".join(can_i_command(p) for p in needed),
            status=exc.status, reason=exc.reason, api_status=exc.api_status)

    def headers(self, route: str) -> dict[str, str]:
        """The proof headers for one helper request ({} for the open routes)."""
        if is_open(route):
            return {}
        with self._lock:
            if not self._name or time.monotonic() - self._made > RENEW_AFTER_S:
                self._make()
            return {CALLER_HEADER: self._name, PROOF_HEADER: self._secret}


_proofs_lock = threading.Lock()


def caller_proof(kube: KubeClient) -> CallerProof:
    """The one CallerProof of this KubeClient (so of this command)."""
    with _proofs_lock:
        proof = getattr(kube, "_cedana_caller_proof", None)
        if not isinstance(proof, CallerProof):
            proof = CallerProof(kube)
            kube._cedana_caller_proof = proof  # type: ignore[attr-defined]
        return proof
