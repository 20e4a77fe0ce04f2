"""The web UI in a real headless Chromium (Debian's /usr/bin/chromium via Python Playwright) against a
real `docent up`: sign up, drop a PDF, watch it reach completed, ask, read a streamed answer whose
source points at the right page, follow up in the same conversation, then use the sidebar."""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import TESTDATA
from tests.stack import start_up

CHROMIUM = os.environ.get("DOCENT_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT = Path(os.environ.get("DOCENT_UI_SCREENSHOT", "/tmp/docent-ui.png"))
QUESTION = "Which Stata file versions can R's read.dta and write.dta handle?"
FOLLOW_UP = "And what about SPSS files?"

if not shutil.which(CHROMIUM):
    if os.environ.get("CI"):  # CI installs it: a missing browser there is a failure, not a skip
        raise RuntimeError(f"{CHROMIUM} missing: apt-get install -y chromium")
    pytest.skip(f"{CHROMIUM} missing: apt-get install -y chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def stack():
    up = start_up()
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
