"""Demo: replay a slice of the vendored ml-latest-small through POST /events and show how one user's
recommendations, favourite genre, a generated review, a suggestion (task "suggest": the LLM's answer
given the first recommendation) and a chat answer change as new events arrive.
Exits 1 when a generated text loops, is garbled (symbols, blank-line runs, a column of one-word lines
that start alike) or is empty (training/text_metrics.py). Checks what each suggestion states against the
item it was given and the replayed history (the title, its year and genres, the reason: "you often
watch ..." or "something new to try"; `suggestion_facts`) and prints the verdicts; wrong facts are
reported, not an exit code.

Usage (with the stack running, e.g. `make run`):
    .venv/bin/python scripts/demo.py [--url http://127.0.0.1:8000] [--user 414] [--first 15] [--then 25]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import Event, Item, load_dataset  # noqa: E402
from training.text_metrics import (  # noqa: E402
    garbled,
    has_words,
    loops,
    mentioned_titles,
    suggestion_facts,
    title_index,
)
from training.text_tasks import top_categories  # noqa: E402

CHAT_PROMPT = "Describe my taste in movies."


def post(client: httpx.Client, path: str, body: dict) -> dict:
    """POST and return the JSON answer; waits up to 120 s while the stack answers 503 (the generation
    server still loading after `make run`), and exits with the status and body on any other error."""
    for attempt in range(240):
        resp = client.post(path, json=body)
        if resp.status_code != 503:
            break
        if attempt == 0:
            print(f"POST {path}: 503, waiting for the stack to be ready ...", file=sys.stderr)
        time.sleep(0.5)
    if resp.status_code != 200:
        raise SystemExit(f"POST {path} answered {resp.status_code}: {resp.text[:500]}")
    return resp.json()


def show(
    client: httpx.Client, user: str, review_item: str, titles: dict[str, str], label: str
) -> tuple[list[str], dict[str, str], str | None]:
    """Print what the user gets; return the recommended item ids, the generated texts and the item the
    suggestion was given."""
    rec = post(client, "/recommend", {"user_id": user, "k": 5, "exclude_seen": True})
    genre = post(client, "/generate", {"user_id": user, "task": "genre"})
    common = {"user_id": user, "max_new_tokens": 48, "temperature": 0}
    review = post(client, "/generate", {**common, "task": "review", "item_id": review_item, "rating": 4.5})
    suggest = post(client, "/generate", {**common, "task": "suggest"})
    chat = post(client, "/generate", {**common, "task": "chat", "prompt": CHAT_PROMPT})
    print(f"\n=== {label} (personalized={rec['personalized']}, model_version={rec['model_version']}) ===")
    for item in rec["items"]:
        print(f"  {item['rank']}. {item['title']}  (score {item['score']:.3f})")
    print("  favourite genre: " + ", ".join(f"{g['genre']} {g['probability']:.0%}" for g in genre["genres"]))
    print(f"  review of {titles.get(review_item, review_item)!r}: {review['text'][:300]}")
    given = suggest["item"]  # None when the user has seen every item
    print(f"  suggest (given {given and given['title']!r}): {suggest['text'][:300]}")
    print(f"  chat {CHAT_PROMPT!r}: {chat['text'][:300]}")
    texts = {"review": review["text"], "suggest": suggest["text"], "chat": chat["text"]}
    return [i["item_id"] for i in rec["items"]], texts, given and given["item_id"]


def fact_check(answer: str, given: str | None, items: dict[str, Item], history: list[Event]) -> str:
    """One line: whether a suggestion names the item it was given (`given`, an item id; None: the user
    has seen every item) and whether the year, the genres and the reason it states agree with that
    item's catalogue entry and with the user's three most frequent genres in `history`."""
    if given is None:
        return "given no item (every item seen)"
    item = items[given]
    named = mentioned_titles(answer, title_index({i: it.title for i, it in items.items() if it.title}))
    if named and named[0] == given:
        title = "title right"
    else:
        other = f"names {items[named[0]].title}" if named else "names no catalogue title"
        title = f"title WRONG ({other})"
    favourites = top_categories(history)
    categories = sorted({c for it in items.values() for c in it.categories})
    facts = suggestion_facts(answer, item.title or "", item.categories, favourites, categories, "movie")
    about = {
        "year": f"the catalogue has {item.title}",
        "genres": f"its genres: {', '.join(item.categories)}",
        "reason": f"the user's top genres: {', '.join(favourites) or 'none'}",
    }
    verdicts = [
        f"{kind} {'right' if ok else 'WRONG'}" + ("" if ok else f" ({about[kind]})")
        for kind, ok in facts.items()
        if ok is not None
    ]
    return f"given {item.title}: " + "; ".join([title, *verdicts])


def replay(client: httpx.Client, user: str, events: list, expected_total: int) -> None:
    body = {
        "events": [
            {
                "user_id": user,
                "item_id": e.item,
                "timestamp": e.timestamp,
                "rating": e.rating,
                "event_id": f"demo-{user}-{e.item}-{e.timestamp}",
            }
            for e in events
        ]
    }
    resp = client.post("/events", json=body)
    resp.raise_for_status()
    print(f"\nPOST /events: {len(events)} events -> {resp.json()}")
    for _ in range(120):
        info = client.get(f"/users/{user}")
        if info.status_code == 200 and info.json()["events_seen"] >= expected_total:
            print(f"worker applied them: {info.json()}")
            return
        time.sleep(0.5)
    raise SystemExit(f"the worker did not apply the events of {user} within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("USERLLM_API_KEY"),
        help="an API key with the ingest and read scopes (default $USERLLM_API_KEY; none for `make run`)",
    )
    parser.add_argument("--user", default="414", help="ml-latest-small userId whose history is replayed")
    parser.add_argument("--first", type=int, default=15, help="events sent before the first look")
    parser.add_argument("--then", type=int, default=25, help="events sent before the second look")
    args = parser.parse_args()
    data = load_dataset("movielens-latest")
    if args.user not in data.timelines:
        raise SystemExit(f"user {args.user} is not in ml-latest-small")
    history = data.timelines[args.user][: args.first + args.then]
    titles = {i: (it.title or i) for i, it in data.items.items()}
    user = f"demo-{args.user}-{int(time.time())}"
    review_item = history[-1].item
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    after_first, after_all = f"after {args.first}", f"after {len(history)}"
    with httpx.Client(base_url=args.url, timeout=120, headers=headers) as client:
        _, cold, given_cold = show(client, user, review_item, titles, "before any event (cold start)")
        replay(client, user, history[: args.first], args.first)
        first, texts_first, given_first = show(client, user, review_item, titles, f"{after_first} events")
        replay(client, user, history[args.first :], len(history))
        second, texts_second, given_second = show(client, user, review_item, titles, f"{after_all} events")
    changed = len(set(first) ^ set(second)) // 2
    print(f"\n{changed} of 5 recommendations changed after the new events arrived.")
    answers = {"cold start": cold, after_first: texts_first, after_all: texts_second}
    for kind in ("review", "suggest", "chat"):
        same = len({a[kind] for a in answers.values()}) == 1
        print(f"{kind}: {'the same' if same else 'differs'} for cold start and the personalized user")
    seen = {"cold start": [], after_first: history[: args.first], after_all: history}
    given = {"cold start": given_cold, after_first: given_first, after_all: given_second}
    for when, texts in answers.items():
        verdict = fact_check(texts["suggest"], given[when], data.items, seen[when])
        print(f"suggestion facts, {when}: {verdict}")
    bad = [f"{when} {kind}: {'loops' if loops(text) else 'empty' if not has_words(text) else garbled(text)}"
           for when, texts in answers.items() for kind, text in texts.items()
           if loops(text) or not has_words(text) or garbled(text)]  # fmt: skip
    if bad:
        print(f"DEGENERATE TEXT: {'; '.join(bad)}", file=sys.stderr)
        return 1
    print("every generated text passed the loop and garble checks (training/text_metrics.py)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
