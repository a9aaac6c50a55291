#!/usr/bin/env bash
# A grpcurl session against a running `onnxforge serve`, using server reflection only:
# grpcurl needs no .proto file, it asks the server what its services and messages are.
#
#     onnxforge serve                                        # in another terminal
#     bash examples/grpcurl_session.sh [HOST:PORT] [MODEL]   # default 127.0.0.1:8001 digits-mlp
#
# grpcurl (https://github.com/fullstorydev/grpcurl) is a single Go binary; install it with
# your package manager or `go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest`.
# Every call below prints its answer as JSON.
set -euo pipefail

ADDRESS="${1:-127.0.0.1:8001}"
MODEL="${2:-digits-mlp}"
SERVICE=inference.GRPCInferenceService

# -plaintext: the server listens without TLS by default (with TLS or a token, use
# -cacert ca.pem and -H 'authorization: Bearer TOKEN' instead).
call() { grpcurl -plaintext "$@"; }

echo "## services (reflection)"
call "$ADDRESS" list

echo "## methods of $SERVICE"
call "$ADDRESS" describe "$SERVICE"

echo "## the request message of ModelInfer"
call "$ADDRESS" describe inference.ModelInferRequest

echo "## ServerLive"
call "$ADDRESS" "$SERVICE/ServerLive"

echo "## ModelMetadata"
call -d "{\"name\": \"$MODEL\"}" "$ADDRESS" "$SERVICE/ModelMetadata"

# One 8x8 image of a "7" (1 = ink, 0 = background), written as its 8 rows of pixels.
# JSON has no bytes, so the values go in the typed field contents.fp32_contents (the
# protocol's other way, raw_input_contents, carries raw little-endian bytes).
REQUEST=$(cat <<EOF
{
  "model_name": "$MODEL",
  "id": "grpcurl-1",
  "inputs": [{
    "name": "x", "datatype": "FP32", "shape": [1, 64],
    "contents": {"fp32_contents": [
      0, 1, 1, 1, 1, 1, 0, 0,
      0, 0, 0, 0, 0, 1, 0, 0,
      0, 0, 0, 0, 1, 0, 0, 0,
      0, 0, 0, 1, 0, 0, 0, 0,
      0, 0, 1, 0, 0, 0, 0, 0,
      0, 0, 1, 0, 0, 0, 0, 0,
      0, 0, 1, 0, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 0
    ]}
  }],
  "outputs": [{"name": "probabilities"}]
}
EOF
)

echo "## ModelInfer request"
echo "$REQUEST"
echo "## ModelInfer response (probabilities of the digits 0..9: the largest is at index 7)"
# -d @ reads the request from standard input.
call -d @ "$ADDRESS" "$SERVICE/ModelInfer" <<<"$REQUEST"
