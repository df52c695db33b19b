"""The orchestration layer users build on a Flotilla node, through unmodified
third-party libraries (issue 17's done-when):

- LangChain `ChatOpenAI.bind_tools` in an agent loop that calls a local
  Python tool and answers from its result;
- LangChain `with_structured_output(method="json_schema")` returning a
  validated pydantic object;
- `OpenAIEmbeddings` and `OllamaEmbeddings` filling a Chroma collection,
  and a retrieval-augmented answer from it;
- the `ollama` client's chat with tools and `format`;
- LiteLLM with the `ollama/`, `ollama_chat/` and `openai/` prefixes.

Prints one JSON object; the Rust test (tests/tests/orchestration.rs)
judges it. Usage: orchestration.py HTTP_URL MODEL
"""

import json
import os
import sys

# LiteLLM fetches a price list at import unless told to use its own copy;
# Chroma reports telemetry unless told not to. Neither may leave the box.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

POLICY = "Our internal server policy requires 2FA for all SSH connections."
DISTRACTORS = [
    "The cafeteria on the second floor serves lunch from noon until two.",
    "Expense reports must be filed within thirty days of travel.",
    "The quarterly all-hands meeting takes place in the main auditorium.",
]
QUESTION = "What is the rule for SSH?"


def main() -> None:
    http_url, model = sys.argv[1:3]
    answers = {}

    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings
    from pydantic import BaseModel

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers and return the product."""
        answers.setdefault("tool_invocations", []).append([a, b])
        return a * b

    llm = ChatOpenAI(
        model=model,
        base_url=f"{http_url}/v1",
        api_key="not-needed-on-loopback",
        temperature=0,
        max_tokens=96,
    )

    # An agent loop: the model calls the tool, the tool runs here, the
    # model answers from its result.
    with_tools = llm.bind_tools([multiply])
    messages = [HumanMessage("What is 12 times 7? Use the multiply tool.")]
    for _ in range(4):
        reply = with_tools.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        answers.setdefault("tool_calls", []).extend(
            {"name": call["name"], "args": call["args"]} for call in reply.tool_calls
        )
        for call in reply.tool_calls:
            messages.append(multiply.invoke(call))
    answers["agent_answer"] = messages[-1].content

    # Streamed, the call arrives in the chunks' tool_call_chunks.
    streamed = None
    for chunk in with_tools.stream([HumanMessage("What is 6 times 7? Use the multiply tool.")]):
        streamed = chunk if streamed is None else streamed + chunk
    answers["streamed_tool_calls"] = [
        {"name": call["name"], "args": call["args"]} for call in streamed.tool_calls
    ]

    class Person(BaseModel):
        name: str
        age: int
        city: str

    structured = llm.with_structured_output(Person, method="json_schema")
    person = structured.invoke("Ada is a 36 year old engineer from Oslo. Describe her.")
    answers["structured"] = person.model_dump()
    answers["structured_type"] = type(person).__name__

    # Retrieval-augmented generation over a local Chroma collection, filled
    # once through each embeddings client.
    import chromadb
    from chromadb.config import Settings
    from langchain_chroma import Chroma
    from langchain_ollama import OllamaEmbeddings

    documents = [POLICY, *DISTRACTORS]
    retrieved = {}
    for name, embeddings in [
        (
            "openai",
            OpenAIEmbeddings(
                model=model,
                base_url=f"{http_url}/v1",
                api_key="not-needed-on-loopback",
                # Token counting would fetch tiktoken's tables from the
                # internet; the node counts tokens itself.
                check_embedding_ctx_length=False,
            ),
        ),
        ("ollama", OllamaEmbeddings(model=model, base_url=http_url)),
    ]:
        client = chromadb.EphemeralClient(Settings(anonymized_telemetry=False))
        store = Chroma.from_texts(
            documents, embedding=embeddings, client=client, collection_name=f"policies_{name}"
        )
        found = store.similarity_search(QUESTION, k=1)
        retrieved[name] = found[0].page_content
    answers["retrieved"] = retrieved
    context = retrieved["openai"]
    rag = llm.invoke(
        [
            HumanMessage(
                f"Answer from the context only.\nContext: {context}\nQuestion: {QUESTION}"
            )
        ]
    )
    answers["rag_answer"] = rag.content

    import ollama

    local = ollama.Client(host=http_url)

    def add(a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: the first integer
            b: the second integer
        """
        return a + b

    replied = local.chat(
        model=model,
        messages=[{"role": "user", "content": "What is 40 plus 2? Use the add tool."}],
        tools=[add],
        options={"temperature": 0},
    )
    answers["ollama_tool_calls"] = [
        {"name": call.function.name, "args": dict(call.function.arguments)}
        for call in replied.message.tool_calls or []
    ]
    formatted = local.chat(
        model=model,
        messages=[{"role": "user", "content": "Describe Ada, 36, from Oslo, as JSON."}],
        format=Person.model_json_schema(),
        options={"temperature": 0},
    )
    answers["ollama_format"] = json.loads(formatted.message.content)

    import litellm

    question = [{"role": "user", "content": "What is the capital of France? One word."}]
    litellm_answers = {}
    for prefix, base in [
        ("ollama", http_url),
        ("ollama_chat", http_url),
        ("openai", f"{http_url}/v1"),
    ]:
        response = litellm.completion(
            model=f"{prefix}/{model}",
            messages=question,
            api_base=base,
            api_key="not-needed-on-loopback",
            temperature=0,
            max_tokens=16,
        )
        litellm_answers[prefix] = response.choices[0].message.content
    answers["litellm"] = litellm_answers

    print(json.dumps(answers))


if __name__ == "__main__":
    main()
