#!/usr/bin/env python3
"""Writes the labelled corpus the model-found kinds are scored on (issue 20):
people's names, organisations' names and street addresses, which no
pattern finds and the agent asks its local model for.

Every message is a sentence or two made with `faker` in seven locales, with
names planted in it (in English or the locale's language), or a message
with none but with things that look like names: product names, cities and
countries on their own, weekdays and months, job titles, capitalised common
words. Each line of the output is one message as JSON, in the format of
corpus.jsonl:

    {"id": 17, "locale": "de_DE", "text": "...",
     "spans": [{"start": 12, "end": 34, "kind": "person"}]}

`start` and `end` count Unicode code points (Python string indices). Kinds
are the scrubber's: person, organisation, address. A person is labelled
without a title ("Dr."), an organisation with its legal form ("GmbH"), a
street address from the house number or street to the end of its postcode
and city when they follow it; a city or country on its own is not
labelled (it identifies no one).

This corpus is separate from corpus.jsonl, which the Rust corpus test
scores on the pattern kinds: its messages hold unlabelled names, and these
hold no pattern kinds.

Deterministic: the same seed and the same faker version give the same
file; the first message's `generator` field names both.

    python3 scrub/eval/make_names_corpus.py > scrub/eval/names_corpus.jsonl
    python3 scrub/eval/make_names_corpus.py --seed 21 > /tmp/held-out.jsonl
"""

import json
import os
import random
import string
import sys

import faker

# Some of faker's locale data are sets, whose order follows Python's string
# hashing: fix it, or some locales' values change from run to run.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

SEED = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 20
LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL"]
LANGUAGE = {"en_US": "en", "en_GB": "en", "de_DE": "de", "fr_FR": "fr", "es_ES": "es", "it_IT": "it", "nl_NL": "nl"}
NAME_MESSAGES = 520
CLEAN_MESSAGES = 180

rng = random.Random(SEED)
fakers = {}
for number, locale in enumerate(LOCALES):
    fake = faker.Faker(locale)
    fake.seed_instance(SEED * 100 + number)
    fakers[locale] = fake


def tidy(value):
    """One line, single spaces: faker's en_GB addresses span lines and
    some es_ES ones end in spaces."""
    return " ".join(value.replace("\n", ", ").split())


# --- values of each kind -------------------------------------------------


def person(fake):
    style = rng.random()
    if style < 0.75:
        return f"{fake.first_name()} {fake.last_name()}"
    if style < 0.9:
        # faker's own: double-barrelled names, two surnames (es_ES), and
        # sometimes a title, which is not part of the label.
        name = tidy(fake.name())
        for title in ("Prof. Dr. ", "Dr. ", "Univ.Prof. ", "Dipl.-Ing. ", "Mr. ", "Mrs. ", "Ms. ", "Miss ",
                      "Dr ", "Mr ", "Mrs ", "Ms ", "Mx. ", "Mme ", "M. ", "Sr. ", "Sra. ", "Dott. ", "Sig. ",
                      "Dhr. ", "Mevr. ", "Ir. ", "Drs. ", "Ing. ", "Prof. ", "MSc. ", "BSc. "):
            name = name.removeprefix(title)
        for suffix in (" MD", " DDS", " PhD", " DVM", " Jr.", " Sr.", " II", " III", " IV", " V", " B.Sc.", " MBA"):
            name = name.removesuffix(suffix)
        return name
    return fake.last_name() if style < 0.95 else fake.first_name()


def organisation(fake):
    return tidy(fake.company())


def address(fake):
    street = tidy(fake.street_address())
    style = rng.random()
    if style < 0.5:
        return street
    locale = fakers_locale[id(fake)]
    if locale == "en_US":
        return f"{street}, {fake.city()}, {fake.state_abbr()} {fake.postcode()}"
    if locale == "en_GB":
        return f"{street}, {fake.city()} {fake.postcode()}"
    return f"{street}, {fake.postcode()} {fake.city()}"


fakers_locale = {id(fake): locale for locale, fake in fakers.items()}

VALUES = {"person": person, "organisation": organisation, "address": address}

# --- sentences -----------------------------------------------------------

# A template is a list of pieces: plain text (formatted with the unlabelled
# fields: {city}, {country}, {weekday}, {month}, {day}, {time}, {product},
# {job}, {word}, {order}) and slots ("person", "organisation", "address"),
# each filled with a fresh value and labelled.
P, O, A = ("person",), ("organisation",), ("address",)

TEMPLATES = {
    "en": [
        ["Hi ", P, ", thanks for the quick reply on ", "{weekday}."],
        ["Please ask ", P, " from ", O, " to send the signed contract by {month} {day}."],
        ["The parcel for ", P, " should go to ", A, ", not to the office."],
        ["I met ", P, " at the {city} trade fair; she now works for ", O, "."],
        ["Our new supplier is ", O, ", based at ", A, "."],
        ["Can you book a table for ", P, " and ", P, " on {weekday} at {time}?"],
        ["Invoice from ", O, " attached, order {order}."],
        ["Best regards, ", P],
        ["My flat is at ", A, "; ring twice, the bell is broken."],
        ["", P, " says the {product} we bought last {month} keeps crashing."],
        ["The {job} position was filled by ", P, ", who came over from ", O, "."],
        ["Delivery address: ", A],
        ["Forwarding this from ", P, ": the meeting with ", O, " moved to {weekday}."],
        ["", O, " has not paid since {month}; their accounts contact is ", P, "."],
        ["We are moving to ", A, " on the first of {month}."],
        ["Dear ", P, ", your {product} is ready for pickup in our {city} shop."],
    ],
    "de": [
        ["Hallo ", P, ", danke für die schnelle Antwort am {weekday}."],
        ["Bitte schicken Sie die Rechnung an ", O, ", ", A, "."],
        ["Herr ", P, " von ", O, " ruft am {weekday} zurück."],
        ["Die Lieferung geht an ", A, ", zu Händen von ", P, "."],
        ["Mit freundlichen Grüßen, ", P],
        ["Frau ", P, " hat den {product} im {month} bei ", O, " bestellt."],
        ["Unsere neue Adresse ab {month}: ", A],
        ["Ich habe ", P, " auf der Messe in {city} getroffen."],
    ],
    "fr": [
        ["Bonjour ", P, ", merci pour votre réponse de {weekday}."],
        ["Merci d'envoyer le colis à ", A, "."],
        ["", P, " travaille maintenant chez ", O, " à {city}."],
        ["La facture de ", O, " est arrivée, commande {order}."],
        ["Cordialement, ", P],
        ["Nous déménageons au ", A, " en {month}."],
        ["Madame ", P, " a acheté le {product} chez ", O, "."],
    ],
    "es": [
        ["Hola ", P, ", gracias por la respuesta del {weekday}."],
        ["Envíe el paquete a ", A, ", por favor."],
        ["", P, " trabaja ahora en ", O, ", en {city}."],
        ["La factura de ", O, " llegó ayer, pedido {order}."],
        ["Un saludo, ", P],
        ["Nuestra nueva dirección desde {month}: ", A, "."],
        ["La señora ", P, " compró el {product} en ", O, "."],
    ],
    "it": [
        ["Ciao ", P, ", grazie per la risposta di {weekday}."],
        ["Spedite il pacco a ", A, ", per favore."],
        ["", P, " lavora adesso per ", O, " a {city}."],
        ["La fattura di ", O, " è arrivata, ordine {order}."],
        ["Cordiali saluti, ", P],
        ["Da {month} il nostro indirizzo è ", A, "."],
        ["Il signor ", P, " ha comprato il {product} da ", O, "."],
    ],
    "nl": [
        ["Hoi ", P, ", bedankt voor je antwoord van {weekday}."],
        ["Stuur het pakket naar ", A, " alstublieft."],
        ["", P, " werkt nu bij ", O, " in {city}."],
        ["De factuur van ", O, " is binnen, bestelling {order}."],
        ["Met vriendelijke groet, ", P],
        ["Ons nieuwe adres vanaf {month}: ", A, "."],
        ["Mevrouw ", P, " heeft de {product} bij ", O, " gekocht."],
    ],
}

# Messages with no names, with look-alikes in them.
CLEAN_TEMPLATES = {
    "en": [
        "The {product} update is out; install it before {weekday}.",
        "We fly to {city} on {weekday} and back in {month}.",
        "Is the {product} still under warranty after {month}?",
        "Weather in {city}: rain on {weekday}, sun on the weekend.",
        "Please Review The Attached {word2} Before The Next Sprint.",
        "The {job} role is still open; interviews start {weekday}.",
        "Shipping to {country} takes about ten days.",
        "Reminder: Stand-Up moves to {time} on {weekday}.",
        "{word2} and {word3} are on the agenda for {month}.",
        "Order {order} ({product}) was delayed by the strike in {city}.",
        "Our {city} office closes early on {weekday}.",
        "New Year, New Goals: Budget Review in {month}.",
        "The {product} and the {product2} both failed the drop test.",
        "Main branch is frozen until {weekday}; Release Candidate 2 is tagged.",
    ],
    "de": [
        "Der {product} ist ab {weekday} wieder lieferbar.",
        "Wir fahren im {month} nach {city}.",
        "Die Besprechung ist am {weekday} um {time}.",
        "Versand nach {country} dauert etwa zehn Tage.",
    ],
    "fr": [
        "Le {product} sera de nouveau disponible {weekday}.",
        "Nous partons à {city} en {month}.",
        "La réunion est {weekday} à {time}.",
        "La livraison vers {country} prend dix jours.",
    ],
    "es": [
        "El {product} vuelve a estar disponible el {weekday}.",
        "Viajamos a {city} en {month}.",
        "La reunión es el {weekday} a las {time}.",
        "El envío a {country} tarda unos diez días.",
    ],
    "it": [
        "Il {product} torna disponibile {weekday}.",
        "Andiamo a {city} a {month}.",
        "La riunione è {weekday} alle {time}.",
        "La spedizione in {country} richiede dieci giorni.",
    ],
    "nl": [
        "De {product} is vanaf {weekday} weer leverbaar.",
        "We gaan in {month} naar {city}.",
        "De vergadering is op {weekday} om {time}.",
        "Verzending naar {country} duurt ongeveer tien dagen.",
    ],
}

# Invented product names: capitalised, name-like, no company's name in them.
PRODUCTS = [
    "Aurora desk lamp", "Nimbus 3 router", "Falcon X200 drone", "Orion smartwatch", "Vega 14 laptop",
    "Zephyr air purifier", "Atlas standing desk", "Juno espresso machine", "Titan Pro blender",
    "Luna baby monitor", "Helix 2 headphones", "Nova tablet", "Polaris e-bike", "Echo Mini speaker",
]


def fields(fake, language):
    """The unlabelled fields of one sentence: places from the locale, days
    and months in the sentence's language."""
    calendar = fakers["en_US"] if language == "en" else fake
    return {
        "city": fake.city(),
        "country": fake.country(),
        "weekday": calendar.day_of_week(),
        "month": calendar.month_name(),
        "day": str(rng.randrange(1, 29)),
        "time": f"{rng.randrange(7, 19)}:{rng.choice(['00', '15', '30', '45'])}",
        "product": rng.choice(PRODUCTS),
        "product2": rng.choice(PRODUCTS),
        "job": fakers["en_US"].job(),
        "word2": fakers["en_US"].word().capitalize(),
        "word3": fakers["en_US"].word().capitalize(),
        "order": f"{rng.choice(string.ascii_uppercase)}-{rng.randrange(10**5, 10**6)}",
    }


def fill(template, fake, filled, spans, text):
    """Appends `template` to `text`, each slot with a fresh value of its
    kind labelled in `spans`."""
    for piece in template:
        if isinstance(piece, tuple):
            kind = piece[0]
            value = VALUES[kind](fake)
            spans.append({"start": len(text), "end": len(text) + len(value), "kind": kind})
            text += value
        else:
            text += piece.format(**filled)
    return text


def language_of(locale):
    # Most messages in the locale's language, some in English, as a
    # multinational team writes.
    return LANGUAGE[locale] if rng.random() < 0.6 else "en"


def then(text):
    """`text` ready for another sentence."""
    return text + (" " if text.endswith((".", "?", "!")) else ". ")


def name_sentence(locale, fake, spans, text):
    language = language_of(locale)
    return fill(rng.choice(TEMPLATES[language]), fake, fields(fake, language), spans, text)


def clean_sentence(locale, fake):
    language = language_of(locale)
    return rng.choice(CLEAN_TEMPLATES[language]).format(**fields(fake, language))


def name_message(locale, fake):
    spans = []
    text = name_sentence(locale, fake, spans, "")
    # One in four carries a second sentence with names.
    if rng.random() < 0.25:
        text = name_sentence(locale, fake, spans, then(text))
    # Some also carry a sentence with look-alikes and no names.
    if rng.random() < 0.3:
        text = then(text) + clean_sentence(locale, fake)
    return text, spans


def main():
    out = sys.stdout
    messages = ["names"] * NAME_MESSAGES + ["clean"] * CLEAN_MESSAGES
    rng.shuffle(messages)
    for number, what in enumerate(messages):
        locale = LOCALES[number % len(LOCALES)]
        fake = fakers[locale]
        if what == "names":
            text, spans = name_message(locale, fake)
        else:
            text, spans = clean_sentence(locale, fake), []
        for span in spans:
            value = text[span["start"] : span["end"]]
            assert value and value.strip() == value and "\n" not in value, (text, span)
        record = {"id": number, "locale": locale, "text": text, "spans": spans}
        if number == 0:
            record["generator"] = f"make_names_corpus.py seed {SEED}, faker {faker.VERSION}"
        out.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
