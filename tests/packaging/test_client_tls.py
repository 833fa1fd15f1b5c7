"""specrej.Client over TLS against a real TLS server on loopback: server authentication by a
private CA, and mutual TLS with a client certificate."""
import grpc
import pytest

from specrej import Client, ServiceError

from .scripted_coordinator import OK


def test_tls_with_a_private_ca(scripted, certificates):
    servicer, target = scripted([OK], certificates.server_credentials(require_client_auth=False))
    with Client(target, tls_ca=certificates.ca, token="s3cret") as client:
        assert client.generate("Name a colour.").best.text == "answer to Name a colour."
    assert servicer.calls[0].metadata["authorization"] == "Bearer s3cret"


def test_pem_bytes_work_as_well_as_paths(scripted, certificates):
    _, target = scripted([OK], certificates.server_credentials(require_client_auth=True))
    with Client(target, tls_ca=certificates.ca.read_bytes(), tls_cert=certificates.client_cert.read_bytes(),
                tls_key=certificates.client_key.read_bytes()) as client:
        assert client.generate("Name a colour.").best.text


def test_mutual_tls_needs_the_client_certificate(scripted, certificates):
    servicer, target = scripted([OK], certificates.server_credentials(require_client_auth=True))
    with Client(target, tls_ca=certificates.ca, tls_cert=certificates.client_cert,
                tls_key=certificates.client_key) as client:
        assert client.generate("Name a colour.").best.text
    with Client(target, tls_ca=certificates.ca, retries=0, timeout=5) as client, pytest.raises(ServiceError) as failure:
        client.generate("Name a colour.")
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(servicer.calls) == 1


def test_a_server_certificate_from_another_ca_is_refused(scripted, certificates):
    servicer, target = scripted([OK], certificates.server_credentials(require_client_auth=False))
    # The client certificate is not a CA: nothing the server shows is signed by it.
    with Client(target, tls_ca=certificates.client_cert, retries=0, timeout=5) as client, \
            pytest.raises(ServiceError) as failure:
        client.generate("Name a colour.")
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE and not servicer.calls


def test_a_certificate_without_its_key_is_refused_before_connecting(certificates):
    with pytest.raises(ValueError, match="tls_cert and tls_key"):
        Client("127.0.0.1:1", tls_ca=certificates.ca, tls_cert=certificates.client_cert)
