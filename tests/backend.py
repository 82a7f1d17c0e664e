"""Helpers to run sync engines against the example backend on 127.0.0.1."""

from __future__ import annotations

from typing import Any

from sqla_sync import Push, Request, Routes, define_routes


def article_routes(**request_kw: Any) -> Any:
    """Routes of Article/Remark (client ids) and Ledger/Entry (server ids)."""
    return define_routes({
        "articles": Routes(
            fields={"updated_at": "updatedAt"},
            push=Push(
                create=Request("POST", "/api/posts", **request_kw),
                update=Request("PUT", "/api/posts/{id}", **request_kw),
                delete=Request("DELETE", "/api/posts/{id}", **request_kw),
            ),
        ),
        "remarks": Routes(
            fields={"article_id": "postId"},
            push=Push(
                create=Request("POST", "/api/comments"),
                update=Request("PUT", "/api/comments/{id}"),
                delete=Request("DELETE", "/api/comments/{id}"),
            ),
        ),
        "ledgers": Routes(
            push=Push(
                create=Request("POST", "/api/posts"),
                update=Request("PUT", "/api/posts/{id}"),
                delete=Request("DELETE", "/api/posts/{id}"),
            ),
        ),
        "entries": Routes(
            fields={"ledger_id": "postId"},
            push=Push(
                create=Request("POST", "/api/comments"),
                update=Request("PUT", "/api/comments/{id}"),
                delete=Request("DELETE", "/api/comments/{id}"),
            ),
        ),
    })
