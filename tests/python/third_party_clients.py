"""Asks a Flotilla agent one question through unmodified third-party
clients: the official `openai` package (whole and streamed, with usage
asked for; models listed and retrieved), the `ollama` package (generate and
chat, whole and streamed; list, show, ps and pull), a gRPC client whose code
`grpc_tools.protoc` generates here from proto/, and `grpcio-reflection`'s
v1alpha client listing the services. Prints one JSON object with every
answer; the Rust test (tests/tests/clients.rs) judges them.

Usage: third_party_clients.py HTTP_URL GRPC_TARGET MODEL QUESTION PROTO_ROOT
"""

import json
import os
import sys
import tempfile


def main() -> None:
    http_url, grpc_target, model, question, proto_root = sys.argv[1:6]
    answers = {}
    messages = [{"role": "user", "content": question}]

    import openai

    client = openai.OpenAI(base_url=f"{http_url}/v1", api_key="not-needed-on-loopback")
    listed = [m.id for m in client.models.list()]
    answers["openai_models"] = listed
    completion = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0
    )
    answers["openai_chat"] = completion.choices[0].message.content
    answers["openai_usage_total"] = completion.usage.total_tokens
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, stream=True
    )
    answers["openai_chat_stream"] = "".join(
        chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
    )
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage_chunks = [chunk.usage.total_tokens for chunk in stream if chunk.usage is not None]
    answers["openai_stream_usage_chunks"] = len(usage_chunks)
    retrieved = client.models.retrieve(model)
    answers["openai_retrieved"] = retrieved.id
    try:
        client.models.retrieve("no-such-model")
        answers["openai_retrieve_unknown"] = "answered"
    except openai.NotFoundError as error:
        answers["openai_retrieve_unknown"] = f"404: {error.message}"
    try:
        client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
        answers["openai_unknown"] = "answered"
    except openai.NotFoundError as error:
        answers["openai_unknown"] = f"404: {error.message}"
    texts = ["The capital of Germany is Berlin.", "Paris is in France."]
    # The client asks for base64 unless told otherwise; both are checked.
    embedded = client.embeddings.create(model=model, input=texts)
    answers["openai_embeddings"] = [item.embedding for item in embedded.data]
    answers["openai_embeddings_prompt_tokens"] = embedded.usage.prompt_tokens
    answers["openai_embeddings_float"] = client.embeddings.create(
        model=model, input=texts[0], encoding_format="float"
    ).data[0].embedding

    import ollama

    local = ollama.Client(host=http_url)
    listed = local.list().models
    answers["ollama_tags"] = [m.model for m in listed]
    answers["ollama_tags_details"] = [m.details.model_dump() for m in listed]
    shown = local.show(model)
    answers["ollama_show"] = {
        "template": shown.template,
        "details": shown.details.model_dump(),
        "architecture": shown.modelinfo.get("general.architecture"),
        "parameter_count": shown.modelinfo.get("general.parameter_count"),
        "capabilities": shown.capabilities,
    }
    answers["ollama_ps"] = [
        {
            "model": m.model,
            "size_vram": int(m.size_vram),
            "expires_year": m.expires_at.year,
            "parameter_size": m.details.parameter_size,
        }
        for m in local.ps().models
    ]
    answers["ollama_pull"] = local.pull(model).status
    answers["ollama_pull_stream"] = [part.status for part in local.pull(model, stream=True)]
    try:
        local.pull("no-such-model")
        answers["ollama_pull_unknown"] = "answered"
    except ollama.ResponseError as error:
        answers["ollama_pull_unknown"] = f"{error.status_code}: {error.error}"
    options = {"temperature": 0, "num_predict": 24}
    answers["ollama_generate"] = local.generate(model=model, prompt=question, options=options).response
    answers["ollama_generate_stream"] = "".join(
        part.response for part in local.generate(model=model, prompt=question, options=options, stream=True)
    )
    answers["ollama_chat"] = local.chat(model=model, messages=messages, options=options).message.content
    answers["ollama_chat_stream"] = "".join(
        part.message.content or ""
        for part in local.chat(model=model, messages=messages, options=options, stream=True)
    )
    answers["ollama_embed"] = local.embed(model=model, input=texts).embeddings
    answers["ollama_embeddings"] = local.embeddings(model=model, prompt=texts[0]).embedding
    try:
        local.chat(model="no-such-model", messages=messages)
        answers["ollama_unknown"] = "answered"
    except ollama.ResponseError as error:
        answers["ollama_unknown"] = f"{error.status_code}: {error.error}"

    answers["grpc_chat_stream"] = grpc_chat(grpc_target, model, question, proto_root)
    answers["grpc_reflection"] = grpc_reflection_services(grpc_target)
    print(json.dumps(answers))


def grpc_reflection_services(target: str) -> dict:
    """Lists the services with grpcio-reflection's v1alpha client, and
    resolves the inference service's methods through it."""
    import grpc
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        inference = DescriptorPool(database).FindServiceByName("flotilla.inference.v1.Inference")
        return {
            "services": services,
            "inference_methods": sorted(method.name for method in inference.methods),
        }


def grpc_chat(target: str, model: str, question: str, proto_root: str) -> str:
    """Generates Python stubs from the repository's .proto and streams a chat."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="flotilla-grpc-")
    proto = "flotilla/inference/v1/inference.proto"
    status = protoc.main(
        ["protoc", f"-I{proto_root}", f"--python_out={out}", f"--grpc_python_out={out}", proto]
    )
    if status != 0:
        raise RuntimeError(f"protoc failed on {proto} ({status})")
    sys.path.insert(0, out)
    import grpc
    from flotilla.inference.v1 import inference_pb2 as pb
    from flotilla.inference.v1 import inference_pb2_grpc as rpc

    with grpc.insecure_channel(target) as channel:
        stub = rpc.InferenceStub(channel)
        request = pb.ChatRequest(
            model=model,
            messages=[pb.ChatMessage(role="user", content=question)],
            options=pb.SamplingOptions(temperature=0.0, max_tokens=24),
        )
        text = ""
        finished = False
        for response in stub.Chat(request, timeout=120):
            text += response.text
            finished = finished or response.done
        if not finished:
            raise RuntimeError("the gRPC stream ended without a final message")
        return text


if __name__ == "__main__":
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    main()
