#!/usr/bin/env python3
"""Writes the labelled corpus the scrubber is scored on (issue 20).

Every message is a sentence or two with personal data or secrets planted in
it, made with `faker` in several locales, or a message with none but with
things that look like them (dates, prices, order numbers, versions, hex
digests, UUIDs, URLs, EAN barcodes, long words). Each line of the output is
one message as JSON:

    {"id": 17, "locale": "de_DE", "text": "...",
     "spans": [{"start": 12, "end": 34, "kind": "iban"}]}

`start` and `end` count Unicode code points (Python string indices), not
bytes. Kinds are the scrubber's: email, phone, payment_card, iban, us_ssn,
ip_address, secret. A labelled secret (`password: hunter2`) is labelled on
its value only, the way the scrubber replaces it.

Deterministic: the same seed and the same faker version give the same file.
The committed corpus.jsonl was made with the faker version named in its
first message's `generator` field.

    python3 scrub/eval/make_corpus.py > scrub/eval/corpus.jsonl
    python3 scrub/eval/make_corpus.py --seed 21 > /tmp/held-out.jsonl
"""

import base64
import datetime
import json
import os
import random
import string
import sys

import faker

# Some of faker's locale data are sets, whose order follows Python's string
# hashing: fix it, or the it_IT cities (for one) change from run to run.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

# The committed corpus is seed 20; another seed (`--seed 21`) gives a fresh
# corpus from the same templates, to check that the detectors were not
# tuned to the committed one's values.
SEED = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 20
LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "nl_NL", "es_ES", "it_IT"]
PII_MESSAGES = 700
CLEAN_MESSAGES = 350

rng = random.Random(SEED)
fakers = {}
for number, locale in enumerate(LOCALES):
    fake = faker.Faker(locale)
    fake.seed_instance(SEED * 100 + number)
    fakers[locale] = fake


# --- values of each kind -------------------------------------------------


def group(text, size, separator):
    return separator.join(text[i : i + size] for i in range(0, len(text), size))


def email(fake):
    return rng.choice([fake.email, fake.free_email, fake.company_email, fake.ascii_email])()


def phone(fake):
    number = fake.phone_number()
    # en_US numbers sometimes carry an extension ("x1234"): a person reading
    # it would scrub the number without it too, so label the number only.
    return number.split("x")[0].rstrip()


def payment_card(fake):
    kind = rng.choice(
        ["visa16", "visa13", "visa19", "mastercard", "amex", "discover", "jcb16", "diners", "maestro"]
    )
    digits = fake.credit_card_number(card_type=kind)
    style = rng.random()
    if style < 0.4:
        return digits
    separator = " " if style < 0.8 else "-"
    if len(digits) == 15 and kind == "amex":
        return separator.join([digits[:4], digits[4:10], digits[10:]])
    return group(digits, 4, separator)


def iban(fake):
    try:
        value = fake.iban()
    except AttributeError:
        value = fakers["en_GB"].iban()
    return group(value, 4, " ") if rng.random() < 0.5 else value


def us_ssn(fake):
    value = fakers["en_US"].ssn()
    return value


def ip_address(fake):
    return rng.choice([fake.ipv4, fake.ipv4_private, fake.ipv4_public, fake.ipv6])()


def random_token(alphabet, length):
    return "".join(rng.choice(alphabet) for _ in range(length))


ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"


def b64url(data):
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def secret(fake):
    shape = rng.choice(["aws", "github", "github_pat", "openai", "jwt", "random", "random"])
    if shape == "aws":
        return "AKIA" + random_token(string.ascii_uppercase + string.digits, 16)
    if shape == "github":
        return rng.choice(["ghp_", "gho_", "ghs_"]) + random_token(ALNUM, 36)
    if shape == "github_pat":
        return "github_pat_" + random_token(ALNUM, 22) + "_" + random_token(ALNUM, 59)
    if shape == "openai":
        return rng.choice(["sk-", "sk-proj-"]) + random_token(URLSAFE, rng.choice([32, 48, 64]))
    if shape == "jwt":
        header = b64url({"alg": "HS256", "typ": "JWT"})
        payload = b64url({"sub": str(rng.randrange(10**6)), "name": fake.first_name(), "iat": 1700000000 + rng.randrange(10**7)})
        return f"{header}.{payload}.{random_token(URLSAFE, 43)}"
    return random_token(rng.choice([ALNUM, URLSAFE]), rng.choice([24, 32, 40]))


def password(fake):
    return fake.password(length=rng.choice([10, 12, 16]), special_chars=False)


VALUES = {
    "email": email,
    "phone": phone,
    "payment_card": payment_card,
    "iban": iban,
    "us_ssn": us_ssn,
    "ip_address": ip_address,
    "secret": secret,
}

# --- sentences -----------------------------------------------------------

# `{v}` is the value; `{name}`, `{city}`, `{date}`, `{company}` are filled
# from the same locale so the sentences read like real messages.
TEMPLATES = {
    "email": [
        "Hi, it's {name}. You can reach me at {v} if anything changes.",
        "Please forward the invoice to {v} before {date}.",
        "My new address is {v}, the old one no longer works.",
        "Can you add {v} to the mailing list for {company}?",
        "Contact: {v}",
        "I wrote to {v} twice and got no answer.",
        "Bitte schicken Sie die Unterlagen an {v}.",
        "Vous pouvez m'écrire à {v} quand vous voulez.",
        "Stuur het contract naar {v} alstublieft.",
        "Mi correo es {v}, escríbeme.",
    ],
    "phone": [
        "Call me on {v} after six, {name}.",
        "My mobile is {v}.",
        "The office in {city} can be reached at {v} during the week.",
        "If the delivery fails, phone {v} and ask for {name}.",
        "Tel.: {v}",
        "Meine Telefonnummer ist {v}, ruf gerne an.",
        "Vous pouvez m'appeler au {v} demain.",
        "Bel me even op {v} als je er bent.",
        "Llámame al {v} cuando llegues.",
        "Chiamami al {v} stasera.",
    ],
    "payment_card": [
        "Charge it to my card, {v}, expiry 08/27.",
        "The card number is {v} and the name on it is {name}.",
        "I paid with {v} but the order from {company} never arrived.",
        "Please refund the card ending in the number {v}.",
        "Kartennummer: {v}",
        "Ma carte bancaire est la {v}.",
        "Use {v} for the booking in {city}.",
    ],
    "iban": [
        "Please transfer the deposit to {v} by {date}.",
        "My IBAN is {v}, account holder {name}.",
        "Bankverbindung: {v} ({company})",
        "Voici mon IBAN : {v}.",
        "Het rekeningnummer is {v}.",
        "Send the refund to IBAN {v}, thanks.",
        "Paga la factura a la cuenta {v}.",
    ],
    "us_ssn": [
        "My SSN is {v}.",
        "Social security number: {v}, date of birth {date}.",
        "For the tax form: {name}, SSN {v}, living in {city}.",
        "The employee's social security number is {v}.",
        "ssn {v}",
    ],
    "ip_address": [
        "The server at {v} stopped answering around {time}.",
        "Requests from {v} are being blocked by the firewall.",
        "Please whitelist {v} for {company}.",
        "Login attempt from IP {v} on {date}.",
        "ping {v} returns nothing",
        "Der Router hat die Adresse {v}.",
    ],
    "secret": [
        "Here is the key for the staging account: {v}",
        "I accidentally committed {v} to the repo, can you rotate it?",
        "export API_TOKEN={v}",
        "The token {v} expired yesterday.",
        "Authorization: Bearer {v}",
        "Use this one instead: {v} (the old one was revoked).",
    ],
}

PASSWORD_TEMPLATES = [
    "password: {v}",
    "My password is: {v}",
    "Log in as {user} with pwd={v} and change it.",
    "The wifi password is {v}",
    "Passwort: {v}",
    "mot de passe : {v}",
]

# Messages with no personal data, with look-alikes in them.
CLEAN_TEMPLATES = [
    "The meeting moved to {date} at {time}, room {room}.",
    "Order #{order} shipped on {date}; the total was {price}.",
    "We upgraded from version {version} to {version2} last night.",
    "The commit {sha1} fixed the build, see {url}.",
    "Checksum: sha256 {sha256}",
    "Invoice {invoice} for {price} is due {date}.",
    "Internationalisation and the responsibilities of counterrevolutionaries were on the agenda.",
    "The parcel weighs {weight} kg and measures 40 x 30 x 20 cm.",
    "Request id {uuid} failed with status 503 at {time}.",
    "Read the docs at {url} before {date}.",
    "Barcode {ean} is out of stock in {city}.",
    "ISBN {isbn} is the second edition.",
    "Our team in {city} hit {count} signups in Q3, up {percent}% on Q2.",
    "Temperature was {temp} degrees on {date} at {time}.",
    "Flight {flight} departs {date} {time} from gate {gate}.",
    "Tracking number {tracking}; expected {date}.",
    "The population of {city} was {population} in 2021.",
    "Build {version}-rc.{count} passed all {count2} tests.",
    "Coordinates {lat}, {lng} mark the trailhead.",
    "Ticket {ticket} was closed by {name} on {date}.",
    "Call the support line in the app, not by phone, and quote case {order}.",
    "The password policy now needs twelve characters; nothing else changed.",
    "{name} from {company} sent the slides about {catch}.",
    "Postcode {postcode}, building {building}, floor {floor}.",
    "Our account number ends in 4821 and the sort code is on the letter.",
    "Docker image {image}@sha256:{sha256} is the one to deploy.",
    "Serial number SN-{serial} was replaced under warranty.",
    "The ratio was 1:{count} and the time 12:{minutes}:{seconds}.",
]


# Fixed bounds: faker's own defaults end at the current time, which would
# make the corpus depend on the day it was made.
EARLIEST = datetime.datetime(1990, 1, 1)
LATEST = datetime.datetime(2026, 1, 1)


def clean_fields(fake):
    moment = fake.date_time_between_dates(EARLIEST, LATEST)
    date_format = rng.choice(["%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%d %B %Y"])
    return {
        "date": moment.strftime(date_format),
        "time": moment.strftime(rng.choice(["%H:%M", "%H:%M:%S", "%I:%M %p"])),
        "room": str(rng.randrange(100, 999)),
        "order": rng.choice([str(rng.randrange(10**8, 10**10)), f"A-{rng.randrange(2019, 2026)}-{rng.randrange(10**5, 10**6)}"]),
        "price": rng.choice([f"${rng.randrange(1, 5000)}.{rng.randrange(100):02d}", f"€{rng.randrange(1, 9)}.{rng.randrange(100, 999)},{rng.randrange(100):02d}", f"£{rng.randrange(1, 999)}"]),
        "version": f"{rng.randrange(0, 5)}.{rng.randrange(0, 30)}.{rng.randrange(0, 20)}",
        "version2": f"{rng.randrange(0, 5)}.{rng.randrange(0, 30)}.{rng.randrange(0, 20)}.{rng.randrange(0, 9)}",
        "sha1": fake.sha1(),
        "sha256": fake.sha256(),
        "url": fake.url() + fake.uri_path(),
        "invoice": f"INV-{rng.randrange(10**6, 10**7)}",
        "weight": f"{rng.randrange(1, 40)}.{rng.randrange(10)}",
        "uuid": fake.uuid4(),
        "ean": fake.ean13(),
        "isbn": fake.isbn13(),
        "city": fake.city(),
        "count": str(rng.randrange(2, 500)),
        "count2": str(rng.randrange(100, 5000)),
        "percent": str(rng.randrange(1, 90)),
        "temp": str(rng.randrange(-10, 40)),
        "flight": f"{rng.choice(['LH', 'BA', 'AF', 'KL', 'IB'])}{rng.randrange(100, 9999)}",
        "gate": f"{rng.choice('ABCD')}{rng.randrange(1, 60)}",
        "tracking": f"1Z{random_token(string.ascii_uppercase + string.digits, 16)}",
        "population": f"{rng.randrange(10**4, 10**7):,}",
        "lat": f"{rng.uniform(-80, 80):.5f}",
        "lng": f"{rng.uniform(-170, 170):.5f}",
        "ticket": f"{rng.choice(['JIRA', 'OPS', 'SUP'])}-{rng.randrange(1, 99999)}",
        "name": fake.name(),
        "company": fake.company(),
        "catch": fake.catch_phrase(),
        "postcode": fake.postcode(),
        "building": fake.building_number(),
        "floor": str(rng.randrange(1, 30)),
        "image": f"registry.example.com/{fake.word()}/{fake.word()}",
        "serial": random_token(string.ascii_uppercase + string.digits, 10),
        "minutes": f"{rng.randrange(60):02d}",
        "seconds": f"{rng.randrange(60):02d}",
        "user": fake.user_name(),
    }


def fill(template, fields, value, kind, spans, offset):
    """`template` with `{v}` replaced by `value` and the other fields
    filled; records the value's span (shifted by `offset`) in `spans`."""
    before, _, after = template.partition("{v}")
    head = before.format(**fields)
    tail = after.format(**fields)
    start = offset + len(head)
    spans.append({"start": start, "end": start + len(value), "kind": kind})
    return head + value + tail


def pii_message(fake, fields):
    kinds = list(VALUES)
    # Roughly one in four messages carries two values.
    chosen = [rng.choice(kinds + ["password"])]
    if rng.random() < 0.25:
        chosen.append(rng.choice(kinds))
    text = ""
    spans = []
    for kind in chosen:
        if text:
            text += " "
        if kind == "password":
            template = rng.choice(PASSWORD_TEMPLATES)
            text += fill(template, fields, password(fake), "secret", spans, len(text))
        else:
            template = rng.choice(TEMPLATES[kind])
            text += fill(template, fields, VALUES[kind](fake), kind, spans, len(text))
    # Some messages also carry a look-alike that is not personal data.
    if rng.random() < 0.3:
        text += " " + rng.choice(CLEAN_TEMPLATES).format(**fields)
    return text, spans


def main():
    out = sys.stdout
    messages = [("pii", i) for i in range(PII_MESSAGES)] + [("clean", i) for i in range(CLEAN_MESSAGES)]
    rng.shuffle(messages)
    for number, (what, _) in enumerate(messages):
        locale = LOCALES[number % len(LOCALES)]
        fake = fakers[locale]
        fields = clean_fields(fake)
        if what == "pii":
            text, spans = pii_message(fake, fields)
        else:
            text = rng.choice(CLEAN_TEMPLATES).format(**fields)
            spans = []
        for span in spans:
            assert text[span["start"] : span["end"]].strip() == text[span["start"] : span["end"]], (text, span)
        record = {"id": number, "locale": locale, "text": text, "spans": spans}
        if number == 0:
            record["generator"] = f"make_corpus.py seed {SEED}, faker {faker.VERSION}"
        out.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
