"""The web UI in a real headless Chromium (Debian's /usr/bin/chromium via Python Playwright) against a
real `docent up`: sign up, drop a PDF, watch it reach completed, ask, read a streamed answer whose
source points at the right page, follow up in the same conversation, then use the sidebar; then API keys
(created, shown once, used from outside the browser, revoked), quota usage and the over-quota messages;
then two users in two browser contexts sharing a collection (switcher, share dialog, scoped chat, viewer)."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import TESTDATA
from tests.stack import start_up

CHROMIUM = os.environ.get("DOCENT_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = Path(os.environ.get("DOCENT_UI_SCREENSHOT", "/tmp/docent-ui.png"))
QUESTION = "Which Stata file versions can R's read.dta and write.dta handle?"
FOLLOW_UP = "And what about SPSS files?"
# quotas small enough to see and to reach: each test user keeps at most QUOTA_DOCUMENTS documents
QUOTA_DOCUMENTS = 2
QUOTA_STORED_BYTES = 64 * 1024 * 1024
QUOTA_UPLOADS_PER_MINUTE = 30

if not shutil.which(CHROMIUM):
    if os.environ.get("CI"):  # CI installs it: a missing browser there is a failure, not a skip
        raise RuntimeError(f"{CHROMIUM} missing: apt-get install -y chromium")
    pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def stack():
    up = start_up({"DOCENT_QUOTA_DOCUMENTS": str(QUOTA_DOCUMENTS), "DOCENT_QUOTA_STORED_BYTES": str(QUOTA_STORED_BYTES),
                   "DOCENT_QUOTA_UPLOADS_PER_MINUTE": str(QUOTA_UPLOADS_PER_MINUTE)})
    try:
        up.wait_for("Docent is up", 180)
        up.track_descendants()
        yield f"http://127.0.0.1:{up.ports['gateway']}"
    finally:
        up.stop()


async def drop_files(page, selector: str, files: list[tuple[str, bytes, str]]) -> None:
    """A real drop event carrying Files (name, content, mime), as a user's drag and drop produces."""
    payload = [[name, mime, base64.b64encode(content).decode()] for name, content, mime in files]
    transfer = await page.evaluate_handle(
        """(files) => {
               const transfer = new DataTransfer();
               for (const [name, mime, data] of files) {
                   const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
                   transfer.items.add(new File([bytes], name, { type: mime }));
               }
               return transfer;
           }""", payload)
    await page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    await page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


async def ask(page, question: str, index: int):
    await page.get_by_test_id("question").fill(question)
    await page.get_by_test_id("question").press("Enter")
    answer = page.get_by_test_id("assistant-message").nth(index)
    # data-turn-id is set when the final record (the `done` event) arrived
    await answer.and_(page.locator("[data-turn-id]")).wait_for(timeout=60_000)
    return answer


async def test_sign_up_upload_ask_and_follow_up(stack) -> None:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1440, "height": 900})
        console_errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
        page.on("pageerror", lambda error: console_errors.append(str(error)))
        try:
            # sign up
            await page.goto(stack)
            await page.get_by_test_id("tab-signup").click()
            await page.get_by_test_id("auth-email").fill("ada@example.com")
            await page.get_by_test_id("auth-username").fill("Ada Lovelace")
            await page.get_by_test_id("auth-password").fill("correct horse battery")
            await page.get_by_test_id("auth-submit").click()
            await expect(page.get_by_test_id("account-name")).to_have_text("Ada Lovelace")

            # drag and drop the PDF; record every status its row goes through
            await page.evaluate("""() => {
                window.__statuses = [];
                new MutationObserver((records) => records.forEach((r) => {
                    const status = r.target.dataset && r.target.dataset.status;
                    if (status && window.__statuses.at(-1) !== status) window.__statuses.push(status);
                })).observe(document.getElementById('doc-list'),
                            { subtree: true, attributes: true, attributeFilter: ['data-status'] });
            }""")
            pdf, broken = TESTDATA / "R-data_41p.pdf", TESTDATA / "malformed_not-a-pdf.pdf"
            await drop_files(page, "#dropzone", [(pdf.name, pdf.read_bytes(), "application/pdf"),
                                                 (broken.name, broken.read_bytes(), "application/pdf")])
            row = page.locator('[data-testid="doc-row"][data-filename="R-data_41p.pdf"]')
            await expect(row).to_have_attribute("data-status", "completed", timeout=180_000)
            await expect(row.get_by_test_id("doc-status")).to_have_text("Ready")
            statuses = await page.evaluate("window.__statuses")
            assert statuses[-1] == "completed" and {"pending", "processing"} & set(statuses), statuses
            bad_row = page.locator(f'[data-testid="doc-row"][data-filename="{broken.name}"]')
            await expect(bad_row).to_have_attribute("data-status", "failed", timeout=60_000)
            await expect(bad_row.get_by_test_id("doc-error")).to_contain_text("PDF")
            await expect(page.get_by_test_id("doc-count")).to_have_text("2")

            # ask: a streamed answer whose source is page 20
            answer = await ask(page, QUESTION, 0)
            assert int(await answer.get_attribute("data-token-events") or 0) >= 1, "no token event was streamed"
            await expect(answer.locator(".answer-text")).to_contain_text("12")
            chips = answer.get_by_test_id("source-chip")
            assert await chips.count() >= 1
            cited = []
            for i in range(await chips.count()):
                chip = chips.nth(i)
                start = int(await chip.get_attribute("data-page-start"))
                end = int(await chip.get_attribute("data-page-end"))
                cited.append((start, end, await chip.get_attribute("title") or ""))
            # the passage that answers it is on page 20
            hit = next((i for i, (start, end, _snippet) in enumerate(cited) if start <= 20 <= end), None)
            assert hit is not None, cited
            await chips.nth(hit).click()
            dialog = page.get_by_test_id("source-dialog")
            await expect(dialog).to_be_visible()
            await expect(page.get_by_test_id("source-file")).to_have_text("R-data_41p.pdf")
            await expect(page.get_by_test_id("source-page")).to_contain_text("20")
            await expect(page.get_by_test_id("source-snippet")).to_have_text(cited[hit][2])
            await page.keyboard.press("Escape")
            await expect(dialog).to_be_hidden()

            # follow-up in the same conversation
            conversations = page.get_by_test_id("conversation")
            await expect(conversations).to_have_count(1)
            conversation_id = await conversations.first.get_attribute("data-id")
            follow_up = await ask(page, FOLLOW_UP, 1)
            await expect(page.get_by_test_id("user-message")).to_have_count(2)
            await expect(conversations).to_have_count(1)
            assert await conversations.first.get_attribute("data-id") == conversation_id
            await expect(conversations.first).to_have_attribute("aria-current", "true")
            memory_used = await follow_up.get_attribute("data-chat-context-used") == "true"
            await expect(follow_up.get_by_test_id("memory-used")).to_have_count(1 if memory_used else 0)
            await page.screenshot(path=str(SCREENSHOT))

            # the sidebar: new chat, switch back (turns reload from the server), delete
            await page.get_by_test_id("new-chat").click()
            await expect(page.get_by_test_id("welcome")).to_be_visible()
            await conversations.first.click()
            await expect(page.get_by_test_id("assistant-message")).to_have_count(2)
            await expect(page.get_by_test_id("source-chip").first).to_be_visible()
            page.once("dialog", lambda dialog: dialog.accept())
            await conversations.first.get_by_test_id("conversation-delete").click()
            await expect(conversations).to_have_count(0)
            await expect(page.get_by_test_id("welcome")).to_be_visible()

            # a reload keeps the session; the document is still listed
            await page.reload()
            await expect(page.get_by_test_id("account-name")).to_have_text("Ada Lovelace")
            await expect(row).to_have_attribute("data-status", "completed")
            assert not console_errors, console_errors
        finally:
            await browser.close()


async def sign_up(page, stack: str, email: str, name: str) -> None:
    from playwright.async_api import expect

    await page.goto(stack)
    await page.get_by_test_id("tab-signup").click()
    await page.get_by_test_id("auth-email").fill(email)
    await page.get_by_test_id("auth-username").fill(name)
    await page.get_by_test_id("auth-password").fill("correct horse battery")
    await page.get_by_test_id("auth-submit").click()
    await expect(page.get_by_test_id("account-name")).to_have_text(name)


async def test_api_keys_usage_and_limits(stack) -> None:
    """Usage against the quotas follows uploads and deletes; an upload over the document quota and a chat over
    its rate say so (with when to retry); an API key is created in the UI, shown once, copied, works from
    outside the browser, and stops working when revoked in the UI."""
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = await browser.new_context(viewport={"width": 1440, "height": 900})
        await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=stack)
        page = await context.new_page()
        console_errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
        page.on("pageerror", lambda error: console_errors.append(str(error)))
        try:
            await sign_up(page, stack, "grace@example.com", "Grace Hopper")

            # usage: nothing stored yet, then each upload counts (documents in every state count)
            documents, storage = page.get_by_test_id("usage-documents"), page.get_by_test_id("usage-storage")
            documents_used = documents.locator(".usage-value")
            await expect(documents_used).to_have_text(f"0 of {QUOTA_DOCUMENTS}")
            await expect(storage).to_contain_text("0 B of 64 MB")
            await expect(page.get_by_test_id("usage-rates")).to_contain_text(f"{QUOTA_UPLOADS_PER_MINUTE} uploads")
            notes = [(f"note-{i}.md", f"# Note {i}\n\nCOBOL compiler notes, part {i}.\n".encode(), "text/markdown")
                     for i in range(3)]
            await drop_files(page, "#dropzone", notes[:1])
            await expect(documents_used).to_have_text(f"1 of {QUOTA_DOCUMENTS}")
            await expect(storage).to_have_attribute("data-used", str(len(notes[0][1])))
            await expect(storage).to_contain_text(f"{len(notes[0][1])} B of 64 MB")
            await drop_files(page, "#dropzone", notes[1:2])
            await expect(documents_used).to_have_text(f"2 of {QUOTA_DOCUMENTS}")
            await expect(documents).to_have_class("usage-row full")

            # over the document quota: the upload's row and a toast say what to do
            await drop_files(page, "#dropzone", notes[2:])
            refused = page.locator('[data-testid="doc-row"][data-filename="note-2.md"]')
            await expect(refused).to_have_attribute("data-status", "failed")
            await expect(refused.get_by_test_id("doc-error")).to_have_text(
                "Your document quota is used up: delete documents to upload more.")
            await refused.get_by_role("button", name="Dismiss").click()

            # a delete gives the room back
            page.once("dialog", lambda dialog: dialog.accept())
            note = page.locator('[data-testid="doc-row"][data-filename="note-1.md"]')
            await note.get_by_test_id("doc-delete").click()
            await expect(documents_used).to_have_text(f"1 of {QUOTA_DOCUMENTS}")

            # a chat over its rate (the answer the gateway gives then, 429 with Retry-After): when to retry,
            # and the question stays in the box
            async def rate_limited(route):
                await route.fulfill(status=429, headers={"Retry-After": "42"}, json={
                    "detail": "your limit of chats per minute is reached; try again in 42 s",
                    "reason": "CHAT_RATE_LIMITED"})
            await page.route("**/api/chat/stream", rate_limited)
            await page.get_by_test_id("question").fill("What do the notes say?")
            await page.get_by_test_id("question").press("Enter")
            limited = page.get_by_test_id("assistant-message").last
            await expect(limited).to_have_attribute("data-error-reason", "CHAT_RATE_LIMITED")
            await expect(limited).to_contain_text(
                "You have reached your limit of questions per minute. Try again in 42 s")
            await expect(page.get_by_test_id("question")).to_have_value("What do the notes say?")
            await page.unroute("**/api/chat/stream")

            # API keys: create one, shown once with a copy button
            await page.get_by_test_id("open-api-keys").click()
            dialog = page.get_by_test_id("keys-dialog")
            await expect(dialog).to_be_visible()
            await expect(page.get_by_test_id("key-row")).to_have_count(0)
            await page.get_by_test_id("key-name-input").fill("nightly-sync")
            await page.get_by_test_id("key-access-input").select_option("read")
            await page.get_by_test_id("key-expires-input").fill("30")
            await page.get_by_test_id("key-chats-input").fill("20")
            await page.get_by_test_id("key-create").click()
            shown = page.get_by_test_id("new-key")
            await expect(shown).to_be_visible()
            key = (await shown.text_content() or "").strip()
            assert key.startswith("dk_"), key
            await expect(page.get_by_test_id("key-warning")).to_contain_text("you will not see it again")
            await page.get_by_test_id("copy-key").click()
            await expect(page.get_by_test_id("copy-key")).to_have_text("Copied")
            assert await page.evaluate("navigator.clipboard.readText()") == key
            row = page.locator('[data-testid="key-row"][data-name="nightly-sync"]')
            await expect(row).to_have_count(1)
            await expect(row.get_by_test_id("key-prefix")).to_have_text(f"{key[:11]}…")
            await expect(row.get_by_test_id("key-access")).to_have_text("Read")
            await expect(row.get_by_test_id("key-last-used")).to_have_text("Never")
            await expect(row).to_contain_text("20 questions/min")

            # the key works from outside the browser
            async with httpx.AsyncClient(base_url=stack, timeout=30) as client:
                bearer = {"Authorization": f"Bearer {key}"}
                listed = await client.get("/api/upload/", headers=bearer)
                assert listed.status_code == 200, listed.text
                assert [doc["filename"] for doc in listed.json()] == ["note-0.md"]

                # shown once: after a reload the list has the key, the page does not
                await page.reload()
                await page.get_by_test_id("open-api-keys").click()
                await expect(row).to_have_count(1)
                await expect(row.get_by_test_id("key-last-used")).to_have_text("just now")
                await expect(page.get_by_test_id("key-created")).to_be_hidden()
                assert key not in await page.content()

                # revoke, confirmed: gone from the list, refused at once
                page.once("dialog", lambda confirm: confirm.accept())
                await row.get_by_test_id("key-revoke").click()
                await expect(row).to_have_count(0)
                await expect(page.get_by_test_id("key-count")).to_have_text("0")
                refused_key = await client.get("/api/upload/", headers=bearer)
                assert refused_key.status_code == 401, refused_key.text
            await page.keyboard.press("Escape")
            await expect(dialog).to_be_hidden()

            # the browser logs each refused request (the 429s above); nothing else may fail
            unexpected = [e for e in console_errors if "status of 429" not in e]
            assert not unexpected, unexpected
        finally:
            await browser.close()


HANDBOOK = ("lighthouse-handbook.md", b"# Lighthouse keeping\n\n"
            b"The lamp of the Fresnel lighthouse is lit every evening at 18:40 by the duty keeper.\n\n"
            b"The fog horn is tested on the first Monday of each month.\n", "text/markdown")


async def test_two_users_share_a_collection(stack) -> None:
    """Alice creates a collection in the switcher, uploads into it and shares it with Bob as a viewer from the
    share dialog (an unknown email and deleting a non-empty collection are refused in words); Bob, in his own
    browser context, sees it with his role and her document (no delete), asks a question scoped to it and gets
    her document cited, cannot upload into it; Alice removes him, and after a reload it is gone for Bob."""
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        console_errors: list[str] = []
        pages = []
        for _ in range(2):
            context = await browser.new_context(viewport={"width": 1440, "height": 900})
            page = await context.new_page()
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            page.on("pageerror", lambda error: console_errors.append(str(error)))
            pages.append(page)
        alice, bob = pages
        try:
            await sign_up(alice, stack, "alice@example.com", "Alice Liddell")
            await sign_up(bob, stack, "bob@example.com", "Bob Cratchit")

            # alice: All collections and her personal one, which has no share button
            rows = alice.get_by_test_id("collection")
            await expect(rows).to_have_count(2)
            await expect(rows.first).to_have_attribute("data-name", "All collections")
            await expect(rows.first).to_have_attribute("aria-checked", "true")
            personal = rows.nth(1)
            await expect(personal).to_have_attribute("data-name", "Personal")
            await expect(personal.get_by_test_id("collection-role")).to_have_text("Only you")
            await expect(personal.get_by_test_id("collection-manage")).to_have_count(0)
            await expect(alice.get_by_test_id("chat-scope-name")).to_have_text("All collections")
            await expect(alice.get_by_test_id("upload-target")).to_have_text("Adds to Personal")

            # a new collection is chosen at once: uploads go there, chat searches it
            await alice.get_by_test_id("collection-new").click()
            await alice.get_by_test_id("collection-name-input").fill("Lighthouse")
            await alice.get_by_test_id("collection-name-input").press("Enter")
            mine = alice.locator('[data-testid="collection"][data-name="Lighthouse"]')
            await expect(mine).to_have_attribute("aria-checked", "true")
            await expect(mine.get_by_test_id("collection-role")).to_have_text("Owner")
            await expect(alice.get_by_test_id("chat-scope-name")).to_have_text("Lighthouse")
            await expect(alice.get_by_test_id("upload-target")).to_have_text("Adds to Lighthouse")
            collection_id = await mine.get_attribute("data-id")
            await drop_files(alice, "#dropzone", [HANDBOOK])
            doc = alice.locator(f'[data-testid="doc-row"][data-filename="{HANDBOOK[0]}"]')
            await expect(doc).to_have_attribute("data-status", "completed", timeout=60_000)
            await expect(mine).to_contain_text("1 document")

            # the share dialog: refusals said in words, then bob as a viewer
            await mine.get_by_test_id("collection-manage").click()
            dialog, error = alice.get_by_test_id("share-dialog"), alice.get_by_test_id("share-error")
            await expect(dialog).to_be_visible()
            await expect(alice.get_by_test_id("share-title")).to_have_text("Lighthouse")
            members = alice.get_by_test_id("member")
            await expect(members).to_have_count(1)
            alice.once("dialog", lambda confirm: confirm.accept())
            await alice.get_by_test_id("collection-delete").click()
            await expect(error).to_contain_text("still holds 1 document: delete them first")
            await alice.get_by_test_id("share-email").fill("nobody@example.com")
            await alice.get_by_test_id("share-submit").click()
            await expect(error).to_have_text(
                "No Docent account uses this email. Ask them to sign up, then share again.")
            await alice.get_by_test_id("share-email").fill("bob@example.com")
            await alice.get_by_test_id("share-role").select_option("viewer")
            await alice.get_by_test_id("share-submit").click()
            bob_member = alice.locator('[data-testid="member"][data-email="bob@example.com"]')
            await expect(bob_member.get_by_test_id("member-role")).to_have_value("viewer")
            await expect(alice.get_by_test_id("member-count")).to_have_text("2")
            await expect(error).to_be_hidden()
            await alice.screenshot(path=str(SCREENSHOT.with_name("docent-ui-share.png")))
            await alice.keyboard.press("Escape")
            await expect(dialog).to_be_hidden()
            await expect(mine).to_contain_text("2 members")

            # bob (after a reload): the collection with his role, alice's document marked with it, no delete
            await bob.reload()
            shared = bob.locator('[data-testid="collection"][data-name="Lighthouse"]')
            await expect(shared.get_by_test_id("collection-role")).to_have_text("Viewer")
            bob_doc = bob.locator(f'[data-testid="doc-row"][data-filename="{HANDBOOK[0]}"]')
            await expect(bob_doc.get_by_test_id("doc-collection")).to_have_text("Lighthouse")
            await expect(bob_doc.get_by_test_id("doc-delete")).to_have_count(0)
            await expect(bob_doc.get_by_test_id("doc-readonly")).to_have_count(1)

            # chosen: remembered by the tab; a viewer cannot upload; a question searches only it
            await shared.click()
            await bob.reload()
            await expect(shared).to_have_attribute("aria-checked", "true")
            await expect(bob_doc.get_by_test_id("doc-collection")).to_have_count(0)
            await expect(bob.get_by_test_id("chat-scope-name")).to_have_text("Lighthouse")
            await expect(bob.get_by_test_id("dropzone")).to_have_attribute("aria-disabled", "true")
            await expect(bob.get_by_test_id("file-input")).to_be_disabled()
            await expect(bob.get_by_test_id("upload-target")).to_contain_text("You are a viewer of “Lighthouse”")
            async with bob.expect_request("**/api/chat/stream") as asked:
                answer = await ask(bob, "When is the lamp of the lighthouse lit?", 0)
            assert (await asked.value).post_data_json["collection_ids"] == [collection_id]
            await expect(answer.locator(".answer-text")).to_contain_text("18:40")
            chips = answer.get_by_test_id("source-chip")
            await expect(chips.first).to_be_visible()
            assert set(await chips.locator(".name").all_text_contents()) == {HANDBOOK[0]}
            await bob.screenshot(path=str(SCREENSHOT.with_name("docent-ui-viewer.png")))

            # bob sees the members, but shares nothing
            await shared.get_by_test_id("collection-manage").click()
            await expect(bob.get_by_test_id("member")).to_have_count(2)
            await expect(bob.get_by_test_id("share-email")).to_be_hidden()
            await expect(bob.get_by_test_id("collection-delete")).to_be_hidden()
            await expect(bob.get_by_test_id("collection-leave")).to_be_visible()
            await bob.keyboard.press("Escape")

            # alice removes bob; after a reload bob's list has no trace of it and shows everything again
            await mine.get_by_test_id("collection-manage").click()
            alice.once("dialog", lambda confirm: confirm.accept())
            await bob_member.get_by_test_id("member-remove").click()
            await expect(members).to_have_count(1)
            await alice.keyboard.press("Escape")
            await bob.reload()
            await expect(bob.get_by_test_id("collection")).to_have_count(2)
            await expect(shared).to_have_count(0)
            await expect(bob.get_by_test_id("chat-scope-name")).to_have_text("All collections")
            await expect(bob_doc).to_have_count(0)
            await expect(bob.get_by_test_id("file-input")).to_be_enabled()
            # the browser logs each refused request (the 409 and the 404 above); nothing else may fail
            unexpected = [e for e in console_errors if "status of 409" not in e and "status of 404" not in e]
            assert not unexpected, unexpected
        finally:
            await browser.close()


async def test_api_docs_render_offline(stack) -> None:
    """/docs is Swagger UI from the installed swagger-ui-bundle, not a CDN (the machine may be offline)."""
    pytest.importorskip("swagger_ui_bundle", reason="swagger-ui-bundle-v2 not installed: /docs falls back to a CDN")
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            outside: list[str] = []
            page.on("request", lambda request: not request.url.startswith(stack) and outside.append(request.url))
            await page.goto(f"{stack}/docs")
            await expect(page.get_by_text("/api/auth/signup").first).to_be_visible(timeout=20_000)
            await expect(page.get_by_text("/api/chat/stream").first).to_be_visible()
            assert not outside, outside
        finally:
            await browser.close()
