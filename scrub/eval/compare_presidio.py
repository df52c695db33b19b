#!/usr/bin/env python3
"""Scores Microsoft Presidio's analyzer on the scrubber's labelled corpus
and prints per-kind recall and precision beside flotilla-scrub's (issue 20).

A script to run by hand, not part of CI. Presidio lives in its own venv:

    python3.11 -m venv /work/wt/presidio-venv   # any path will do
    /work/wt/presidio-venv/bin/pip install presidio-analyzer faker
    /work/wt/presidio-venv/bin/python scrub/eval/compare_presidio.py

Our findings come from the Rust corpus test (scrub/tests/corpus.rs), which
this script runs with FLOTILLA_SCRUB_FINDINGS set (or pass --ours FILE
written that way).

Presidio needs a spaCy pipeline; the trained ones are not on the package
index this project reaches, so it gets a blank English pipeline (tokenizer
only, no NER). The recognizers that map onto our kinds are pattern and
checksum recognizers that need no NER (email, phone via `phonenumbers`,
credit card, IBAN, US SSN, IP address); names, organisations and places,
which do need it, are out of this comparison (and out of the crate).
Presidio has no recognizer for secrets or API keys, so its recall there is
0. Presidio findings of entity types we do not have (URL, DATE_TIME,
US_BANK_NUMBER, …) are left out: they count neither way.

The matching rule is the Rust test's: the same kind, and an overlap of at
least half of the label and at least half of the finding.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ["email", "phone", "payment_card", "iban", "us_ssn", "ip_address", "secret"]
PRESIDIO_TO_OURS = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "CREDIT_CARD": "payment_card",
    "IBAN_CODE": "iban",
    "US_SSN": "us_ssn",
    "IP_ADDRESS": "ip_address",
}


def load_corpus(path):
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def matches(label, finding):
    overlap = min(label["end"], finding["end"]) - max(label["start"], finding["start"])
    return (
        label["kind"] == finding["kind"]
        and overlap > 0
        and overlap * 2 >= label["end"] - label["start"]
        and overlap * 2 >= finding["end"] - finding["start"]
    )


def score(corpus, findings_by_id):
    scores = {kind: {"labels": 0, "found": 0, "findings": 0, "right": 0} for kind in KINDS}
    for message in corpus:
        labels = message["spans"]
        findings = findings_by_id.get(message["id"], [])
        for label in labels:
            scores[label["kind"]]["labels"] += 1
            if any(matches(label, finding) for finding in findings):
                scores[label["kind"]]["found"] += 1
        for finding in findings:
            scores[finding["kind"]]["findings"] += 1
            if any(matches(label, finding) for label in labels):
                scores[finding["kind"]]["right"] += 1
    for counts in scores.values():
        counts["recall"] = counts["found"] / counts["labels"] if counts["labels"] else 1.0
        counts["precision"] = counts["right"] / counts["findings"] if counts["findings"] else 1.0
    return scores


def our_findings(corpus_path, ours_path):
    if ours_path is None:
        handle, ours_path = tempfile.mkstemp(suffix=".jsonl")
        os.close(handle)
        environment = dict(
            os.environ,
            FLOTILLA_SCRUB_FINDINGS=ours_path,
            FLOTILLA_SCRUB_CORPUS=str(Path(corpus_path).resolve()),
        )
        # The test writes the findings before it asserts, so a failing
        # test (a miss on a checksummed type) still gives its findings.
        test = subprocess.run(
            ["cargo", "test", "--quiet", "-p", "flotilla-scrub", "--test", "corpus"],
            cwd=HERE.parent.parent,
            env=environment,
            capture_output=True,
            text=True,
        )
        if test.returncode != 0:
            print("warning: the corpus test failed:\n" + test.stderr[-2000:], file=sys.stderr)
        if os.path.getsize(ours_path) == 0:
            sys.exit("the corpus test wrote no findings")
    with open(ours_path, encoding="utf-8") as lines:
        return {record["id"]: record["findings"] for record in map(json.loads, lines)}


def presidio_findings(corpus, threshold):
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    model_dir = Path(tempfile.mkdtemp()) / "blank-en"
    spacy.blank("en").to_disk(model_dir)
    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": str(model_dir)}],
        }
    )
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    findings = {}
    for message in corpus:
        results = analyzer.analyze(text=message["text"], language="en", score_threshold=threshold)
        findings[message["id"]] = [
            {"start": result.start, "end": result.end, "kind": PRESIDIO_TO_OURS[result.entity_type]}
            for result in results
            if result.entity_type in PRESIDIO_TO_OURS
        ]
    return findings


def percent(value):
    return f"{100 * value:.1f}%"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=HERE / "corpus.jsonl")
    parser.add_argument("--ours", help="findings written by the corpus test (FLOTILLA_SCRUB_FINDINGS)")
    parser.add_argument(
        "--threshold", type=float, default=0.0, help="Presidio's score_threshold (its default is 0)"
    )
    arguments = parser.parse_args()

    corpus = load_corpus(arguments.corpus)
    ours = score(corpus, our_findings(arguments.corpus, arguments.ours))
    theirs = score(corpus, presidio_findings(corpus, arguments.threshold))

    print(f"corpus: {len(corpus)} messages, {sum(not m['spans'] for m in corpus)} without PII, "
          f"locales {', '.join(sorted({m['locale'] for m in corpus}))}")
    print()
    print("| kind | labels | our recall | our precision | Presidio recall | Presidio precision |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind in KINDS:
        a, b = ours[kind], theirs[kind]
        presidio_precision = percent(b["precision"]) if b["findings"] else "n/a"
        print(
            f"| {kind} | {a['labels']} | {percent(a['recall'])} | {percent(a['precision'])} "
            f"| {percent(b['recall'])} | {presidio_precision} |"
        )
    print()
    print(json.dumps({"ours": ours, "presidio": theirs, "threshold": arguments.threshold}), file=sys.stderr)


if __name__ == "__main__":
    main()
