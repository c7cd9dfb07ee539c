"""LangChain's ChatOllama/OllamaEmbeddings and LlamaIndex's Ollama/OllamaEmbedding, unchanged, on corral."""

from __future__ import annotations

import asyncio

from client_support import Served


def test_langchain_chat_stream_and_embeddings(served: Served) -> None:
    from langchain_core.messages import HumanMessage, SystemMessage
    from langchain_ollama import ChatOllama, OllamaEmbeddings

    llm = ChatOllama(model="tiny", base_url=served.url, temperature=0, validate_model_on_init=True)
    served.fake.enqueue("LangChain says hi")
    msg = llm.invoke([SystemMessage("You are terse."), HumanMessage("hello")])
    assert msg.content == "LangChain says hi"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] == len("LangChain says hi")
    served.fake.enqueue("in pieces")
    assert "".join(str(ch.content) for ch in llm.stream("hello")) == "in pieces"
    served.fake.enqueue("async too")
    assert asyncio.run(llm.ainvoke("hello")).content == "async too"

    emb = OllamaEmbeddings(model="tiny", base_url=served.url)
    docs = emb.embed_documents(["first doc", "second doc"])
    q = emb.embed_query("first doc")
    assert len(docs) == 2 and len(q) == len(docs[0]) and q == docs[0]


def test_langchain_tool_calling(served: Served) -> None:
    from langchain_ollama import ChatOllama

    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"

    llm = ChatOllama(model="tiny-tools", base_url=served.url).bind_tools([get_weather])
    served.fake.enqueue('<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call>')
    msg = llm.invoke("weather in Rome?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Rome"})]


def test_llama_index_llm_and_embeddings(served: Served) -> None:
    from llama_index.core.llms import ChatMessage
    from llama_index.embeddings.ollama import OllamaEmbedding
    from llama_index.llms.ollama import Ollama

    llm = Ollama(model="tiny", base_url=served.url, request_timeout=60, context_window=2048)
    served.fake.enqueue("Indexed reply")
    assert llm.complete("hello").text == "Indexed reply"
    served.fake.enqueue("Chatty reply")
    r = llm.chat([ChatMessage(role="user", content="hello")])
    assert r.message.content == "Chatty reply"
    served.fake.enqueue("streamed")
    assert "".join(ch.delta or "" for ch in llm.stream_complete("hello")) == "streamed"
    served.fake.enqueue("async chat")
    r = asyncio.run(llm.achat([ChatMessage(role="user", content="hello")]))
    assert r.message.content == "async chat"

    emb = OllamaEmbedding(model_name="tiny", base_url=served.url)
    v = emb.get_text_embedding("some text")
    vs = emb.get_text_embedding_batch(["some text", "other text"])
    assert len(vs) == 2 and vs[0] == v and abs(sum(x * x for x in v) - 1) < 1e-4
    assert len(asyncio.run(emb.aget_query_embedding("q"))) == len(v)
