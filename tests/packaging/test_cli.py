"""The command-line client (`specrej`, coordinator/client.py) with its TLS and token options,
from flags and from their environment variables, against a real TLS server on loopback."""
import grpc

from coordinator import client as cli

from .scripted_coordinator import Outcome


def test_flags_carry_tls_and_the_token(scripted, certificates, tmp_path, capsys):
    servicer, target = scripted([Outcome()], certificates.server_credentials(require_client_auth=True))
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    status = cli.main(["Name a colour.", "--target", target, "--tls-ca", str(certificates.ca),
                       "--tls-cert", str(certificates.client_cert), "--tls-key", str(certificates.client_key),
                       "--token-file", str(token_file), "--n", "4"])
    output = capsys.readouterr().out
    assert status == 0
    assert "decision point at token    8 (interval): 4 ranked, 2 kept, 2 rejected" in output
    assert "answer to Name a colour." in output
    assert servicer.calls[0].metadata["authorization"] == "Bearer s3cret"
    assert servicer.calls[0].request.n == 4


def test_environment_supplies_tls_and_the_token(scripted, certificates, tmp_path, monkeypatch, capsys):
    servicer, target = scripted([Outcome()], certificates.server_credentials(require_client_auth=True))
    token_file = tmp_path / "token"
    token_file.write_text("from-env")
    for name, value in {"SPECREJ_TARGET": target, "SPECREJ_TLS_CA": certificates.ca,
                        "SPECREJ_TLS_CERT": certificates.client_cert, "SPECREJ_TLS_KEY": certificates.client_key,
                        "SPECREJ_TOKEN_FILE": token_file}.items():
        monkeypatch.setenv(name, str(value))
    assert cli.main(["Name a colour.", "--json"]) == 0
    assert '"text": "answer to Name a colour."' in capsys.readouterr().out
    assert servicer.calls[0].metadata["authorization"] == "Bearer from-env"


def test_a_rejected_request_prints_the_status_and_the_bad_fields(scripted, capsys):
    _, target = scripted([Outcome(grpc.StatusCode.INVALID_ARGUMENT, "max_new_tokens: must be at least 1",
                                  field_violations=(("max_new_tokens", "must be at least 1"),))])
    assert cli.main(["Name a colour.", "--target", target, "--max-new-tokens", "0"]) == 1
    error = capsys.readouterr().err
    assert "error: INVALID_ARGUMENT: max_new_tokens: must be at least 1 (request id request-1)" in error
    assert "\n  max_new_tokens: must be at least 1" in error


def test_a_missing_token_file_is_reported_without_calling(tmp_path, capsys):
    assert cli.main(["Name a colour.", "--target", "127.0.0.1:1", "--token-file", str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err
