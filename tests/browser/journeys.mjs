// The web console's journeys in Debian's chromium, driven by playwright-core.
// Started by api/tests/console_browser.rs, which serves the API and passes, in the
// environment: CONSOLE_URL, CHROMIUM, CONSOLE_EMAIL, CONSOLE_PASSWORD, OTHER_TENANT_KB,
// ARABIC_PDF, FRENCH_DOCX, OVERSIZE_FILE, SCREENSHOTS. Prints "ok - <journey>" for each
// journey that passed; exits non-zero at the first that fails.
import { readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through api/tests/console_browser.rs`);
  return value;
};
const URL = env("CONSOLE_URL");
const SCREENSHOTS = env("SCREENSHOTS");
// Generous: the machine running this may be loaded.
const SLOW = { timeout: 120_000 };

const browser = await chromium.launch({
  executablePath: env("CHROMIUM"),
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const context = await browser.newContext({ locale: "en-GB", viewport: { width: 1280, height: 860 } });
const page = await context.newPage();
const problems = [];
page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
// The bad paths make the browser log their failed requests; anything else is a bug.
page.on("console", (message) => {
  if (message.type() === "error" && !message.text().startsWith("Failed to load resource")) problems.push(`console: ${message.text()}`);
});

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function shot(name) {
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

// Every form control has a name a screen reader can read out.
async function assertLabelled(screen) {
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select, textarea, button")]
    .filter((el) => !el.closest("[hidden]") && el.type !== "hidden")
    .filter((el) => !(el.labels?.length || el.getAttribute("aria-label") || (el.tagName === "BUTTON" && el.textContent.trim())))
    .map((el) => el.outerHTML.slice(0, 80)));
  check(unlabelled.length === 0, `${screen}: controls without a label: ${unlabelled.join(", ")}`);
}

async function journey(name, body) {
  try {
    await body();
    console.log(`ok - ${name}`);
  } catch (error) {
    console.log(`not ok - ${name}: ${error.message}`);
    await shot("failure").catch(() => {});
    if (problems.length) console.log(problems.join("\n"));
    await browser.close();
    process.exit(1);
  }
}

// Text is at least 4.5:1 against its background (3:1 when large), WCAG AA.
async function assertContrast(screen) {
  const failures = await page.evaluate(() => {
    const rgba = (value) => (value.match(/[\d.]+/g) || []).map(Number);
    const luminance = ([r, g, b]) => {
      const channel = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
      return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
    };
    const background = (el) => {
      for (let node = el; node; node = node.parentElement) {
        const [r, g, b, a = 1] = rgba(getComputedStyle(node).backgroundColor);
        if (a >= 0.99) return [r, g, b];
      }
      return [255, 255, 255];
    };
    const found = [];
    for (const el of document.querySelectorAll("body *")) {
      const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own || !el.checkVisibility() || el.closest("dialog:not([open]), [disabled], .skip")) continue;
      const style = getComputedStyle(el);
      const [r, g, b, a = 1] = rgba(style.color);
      if (a < 0.99) continue;
      const [l1, l2] = [luminance([r, g, b]), luminance(background(el))].sort((x, y) => y - x);
      const ratio = (l1 + 0.05) / (l2 + 0.05);
      const large = parseFloat(style.fontSize) >= 24 || (parseFloat(style.fontSize) >= 18.66 && Number(style.fontWeight) >= 700);
      if (ratio < (large ? 3 : 4.5)) found.push(`${el.tagName}.${el.className} "${el.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`);
    }
    return found;
  });
  check(failures.length === 0, `${screen}: text below the contrast minimum: ${failures.join("; ")}`);
}

const text = (selector) => page.locator(selector).first().innerText();

await journey("wrong password", async () => {
  await page.goto(URL);
  await page.getByLabel("E-mail address").fill(env("CONSOLE_EMAIL"));
  await page.getByLabel("Password").fill("not the password at all");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.locator("#login-error").waitFor();
  check((await text("#login-error")) === "Wrong e-mail address or password.", `the message was: ${await text("#login-error")}`);
  await assertLabelled("login");
  await assertContrast("login");
  // The skip link is the first focusable element, shows when focused, and leads to the content.
  check(await page.evaluate(() => document.querySelector("a, button, input, select, textarea").classList.contains("skip")),
    "the skip link comes first");
  await page.locator(".skip").focus();
  check((await page.locator(".skip").boundingBox()).x >= 0, "the focused skip link is on screen");
  await page.keyboard.press("Enter");
  check(await page.evaluate(() => document.activeElement.id === "main"), "the skip link moves the focus to the content");
  await shot("01-login-wrong-password");
});

await journey("log in", async () => {
  // Signed in with the keyboard alone: Enter in the password field submits.
  await page.getByLabel("Password").fill(env("CONSOLE_PASSWORD"));
  await page.getByLabel("Password").press("Enter");
  await page.getByRole("heading", { level: 1, name: "Knowledge bases" }).waitFor();
  check(await page.getByRole("navigation").getByText(env("CONSOLE_EMAIL")).isVisible(), "the signed-in user is shown");
  const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }) + document.cookie);
  check(!stored.includes("eyJ"), `the token must stay in memory, found it stored: ${stored}`);
});

await journey("create a knowledge base", async () => {
  await page.getByLabel("Name").fill("reglements");
  await page.getByLabel("Description (optional)").fill("Règlements et calendriers — لوائح الجامعة");
  await page.getByRole("button", { name: "Create" }).click();
  await page.getByRole("heading", { level: 1, name: "reglements" }).waitFor();
  await assertLabelled("knowledge base");
  await assertContrast("knowledge base");
});

await journey("upload and watch them reach ready", async () => {
  // A real drop of two files at once onto the drop zone.
  const files = [env("ARABIC_PDF"), env("FRENCH_DOCX")].map((path) => ({
    name: basename(path),
    type: path.endsWith(".pdf") ? "application/pdf" : "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    data: readFileSync(path).toString("base64"),
  }));
  const transfer = await page.evaluateHandle((files) => {
    const transfer = new DataTransfer();
    for (const file of files) {
      const bytes = Uint8Array.from(atob(file.data), (c) => c.charCodeAt(0));
      transfer.items.add(new File([bytes], file.name, { type: file.type }));
    }
    return transfer;
  }, files);
  await page.dispatchEvent("#drop-zone", "dragenter", { dataTransfer: transfer });
  await page.dispatchEvent("#drop-zone", "drop", { dataTransfer: transfer });
  for (const file of files) {
    await page.locator(`li[data-upload="${file.name}"][data-result="sent"]`).waitFor(SLOW);
    const progress = await page.locator(`li[data-upload="${file.name}"] progress`).getAttribute("value");
    check(progress === "100", `${file.name}: the progress bar ends at 100, not ${progress}`);
  }
  await page.waitForFunction(() => {
    const statuses = [...document.querySelectorAll("tr[data-document] [data-status]")].map((b) => b.dataset.status);
    return statuses.length === 2 && statuses.every((s) => s === "ready" || s === "failed");
  }, null, SLOW);
  const rows = await page.locator("tr[data-document]").allInnerTexts();
  check((await page.locator('tr[data-document] [data-status="ready"]').count()) === 2, `both documents are ready: ${rows}`);
  check(rows.some((r) => r.includes("ar")) && rows.some((r) => r.includes("fr")), `the languages are detected: ${rows}`);
  await assertContrast("documents");
  await shot("02-knowledge-base-ready");
});

await journey("oversize upload", async () => {
  await page.setInputFiles("#file-input", env("OVERSIZE_FILE"));
  const item = page.locator(`li[data-upload="${basename(env("OVERSIZE_FILE"))}"][data-result="failed"]`);
  await item.waitFor(SLOW);
  const message = await item.innerText();
  check(message.includes("rapport-annuel.txt: the file is too large (the limit is 256 KB)."), `the message was: ${message}`);
  check((await page.locator("tr[data-document]").count()) === 2, "nothing was added");
  await shot("03-upload-too-large");
});

const question = "متى يفتح التسجيل في الماستر؟";

await journey("ask in Arabic", async () => {
  await page.getByRole("link", { name: "Ask", exact: true }).first().click();
  await page.getByRole("heading", { level: 1, name: "Ask your documents" }).waitFor();
  await page.getByLabel("Your question").fill(question);
  await page.getByRole("button", { name: "Ask", exact: true }).click();
  const turn = page.locator("article.turn").first();
  await turn.locator("button.citation").first().waitFor(SLOW);
  const answer = turn.locator(".answer");
  check((await answer.getAttribute("dir")) === "rtl", "the Arabic answer is marked right-to-left");
  check(await answer.evaluate((el) => getComputedStyle(el).direction === "rtl"), "the answer is laid out right-to-left");
  check(/[\u0600-\u06FF]/.test(await answer.innerText()), "the answer is in Arabic");
  check(await turn.getByText("No language model answered").isVisible(), "the extractive answer is said to be one");
  check((await answer.locator("button.cite-inline").count()) >= 1, "the [n] markers in the answer open their passages");
  await assertLabelled("chat");
  await assertContrast("chat");
  await shot("04-chat-arabic-answer");
});

await journey("open a citation", async () => {
  const citation = page.locator("article.turn").first().locator("button.citation").first();
  const label = await citation.innerText();
  await citation.click();
  const dialog = page.locator("dialog#dialog[open]");
  await dialog.waitFor();
  check((await dialog.locator("h2").innerText()).startsWith("[1]"), `the passage is numbered: ${await dialog.locator("h2").innerText()}`);
  await page.waitForFunction(() => document.getElementById("dialog-body").getAttribute("dir") === "rtl", null, SLOW);
  const passage = await dialog.locator("#dialog-body").innerText();
  check(passage.includes("تلمسان"), `the passage of ${label} is shown in full: ${passage}`);
  await shot("05-citation-passage");
  await page.keyboard.press("Escape");
  await page.locator("dialog#dialog[open]").waitFor({ state: "detached" });
});

await journey("network error during an answer", async () => {
  await page.route("**/api/query", (route) => route.abort("internetdisconnected"));
  await page.getByLabel("Your question").fill("Quand a lieu la session de rattrapage ?");
  await page.getByRole("button", { name: "Ask", exact: true }).click();
  const alert = page.locator("article.turn").first().locator(".alert.error");
  await alert.waitFor(SLOW);
  check((await alert.innerText()) === "The answer was interrupted by a network error. Try again.", `the message was: ${await alert.innerText()}`);
  await page.unroute("**/api/query");
  // Cut off mid-answer: a first token arrives, then the stream ends without its "done".
  await page.route("**/api/query", (route) => route.fulfill({
    status: 200, contentType: "text/event-stream", body: "event: token\ndata: La session de rattrapage\n\n",
  }));
  await page.getByRole("button", { name: "Ask", exact: true }).click();
  const cut = page.locator("article.turn").first();
  await cut.locator(".alert.error").waitFor(SLOW);
  check((await cut.locator(".alert.error").innerText()) === "The answer was interrupted by a network error. Try again.",
    `the message was: ${await cut.locator(".alert.error").innerText()}`);
  check((await cut.locator(".answer").innerText()) === "La session de rattrapage", "the part received stays on screen");
  await page.unroute("**/api/query");
  await shot("06-chat-network-error");
});

await journey("a replaced answer", async () => {
  // The API streamed a model's answer, then replaced it with the passages because the
  // answer was not grounded in them: only the passages stay, and the page says why.
  const done = { citations: [], timings: {}, extractive: true, extractive_reason: "ungrounded", grounded_share: 0.2, language: "fr" };
  await page.route("**/api/query", (route) => route.fulfill({
    status: 200, contentType: "text/event-stream",
    body: "event: token\ndata: Une croisière aux Baléares\n\nevent: replace\ndata: La session de rattrapage a lieu en juin [1]\n\n"
      + `event: done\ndata: ${JSON.stringify(done)}\n\n`,
  }));
  await page.getByLabel("Your question").fill("Quand a lieu la session de rattrapage ?");
  await page.getByRole("button", { name: "Ask", exact: true }).click();
  const turn = page.locator("article.turn").first();
  await turn.getByText("The model's answer did not match your documents").waitFor(SLOW);
  const shown = await turn.locator(".answer").innerText();
  check(shown === "La session de rattrapage a lieu en juin [1]", `the answer shown was: ${shown}`);
  await page.unroute("**/api/query");
});

await journey("switch to French", async () => {
  await page.getByLabel("Language").selectOption("fr");
  await page.getByRole("heading", { level: 1, name: "Interroger vos documents" }).waitFor();
  check((await page.locator("html").getAttribute("lang")) === "fr", "html lang is fr");
  check((await page.locator("html").getAttribute("dir")) === "ltr", "French is left-to-right");
  check(await page.getByRole("link", { name: "Bases de connaissances" }).isVisible(), "the navigation is in French");
  // Arabic turns the whole interface right-to-left.
  await page.getByLabel("Langue").selectOption("ar");
  await page.getByRole("heading", { level: 1, name: "اسأل وثائقك" }).waitFor();
  check((await page.locator("html").getAttribute("dir")) === "rtl", "Arabic is right-to-left");
  await page.getByRole("link", { name: "قواعد المعرفة" }).click();
  await page.getByRole("heading", { level: 1, name: "قواعد المعرفة" }).waitFor();
  await assertContrast("arabic");
  await shot("07-knowledge-bases-arabic-rtl");
  await page.getByLabel("اللغة").selectOption("fr");
  await page.getByRole("heading", { level: 1, name: "Bases de connaissances" }).waitFor();
  await shot("08-knowledge-bases-french");
});

await journey("another tenant's URL", async () => {
  await page.goto(`${URL}/#/kbs/${env("OTHER_TENANT_KB")}`);
  const heading = page.getByRole("heading", { level: 1 });
  await page.getByText("Introuvable").waitFor();
  check((await heading.innerText()).startsWith("Introuvable : cette page n’existe pas"), `the message was: ${await heading.innerText()}`);
  check(!(await page.content()).includes("confidentiel"), "nothing of the other tenant's knowledge base shows");
  await shot("09-other-tenant-not-found");
});

await journey("create an API key", async () => {
  await page.getByRole("link", { name: "Administration" }).click();
  await page.getByRole("heading", { level: 1, name: "Administration" }).waitFor();
  await page.getByLabel("Nom", { exact: true }).fill("intranet");
  await page.getByRole("button", { name: "Créer la clé" }).click();
  const secret = page.locator("[data-secret]");
  await secret.waitFor();
  const value = await secret.innerText();
  check(/^iaf_\S{20,}$/.test(value), `the secret is shown: ${value}`);
  check(await page.getByText("Copiez ce secret maintenant").isVisible(), "the page says it is shown once");
  const row = page.locator('tr[data-key="intranet"]');
  await row.waitFor();
  check(!(await row.innerText()).includes(value), "the list shows a prefix, never the secret");
  await assertLabelled("administration");
  await assertContrast("administration");
  await shot("10-admin-api-key-once");
  // Shown once: leaving and coming back, it is gone, and the page never had it again.
  await page.getByRole("link", { name: "Workflows" }).click();
  await page.getByRole("link", { name: "Administration" }).click();
  await page.locator('tr[data-key="intranet"]').waitFor();
  check((await page.locator("[data-secret]").count()) === 0, "the secret is not shown a second time");
  check(!(await page.content()).includes(value), "the secret is nowhere in the page");
});

await journey("revoke the API key and add a user", async () => {
  page.once("dialog", (dialog) => dialog.accept());
  await page.locator('tr[data-key="intranet"]').getByRole("button", { name: "Révoquer" }).click();
  await page.locator('tr[data-key="intranet"]').getByText("révoquée").waitFor();
  await page.getByLabel("Adresse e-mail", { exact: true }).fill("agent@tlemcen.dz");
  await page.getByLabel("Mot de passe (10 caractères ou plus)").fill("un mot de passe assez long");
  await page.getByRole("button", { name: "Ajouter l’utilisateur" }).click();
  await page.locator('tr[data-user="agent@tlemcen.dz"]').waitFor();
  check((await page.locator('tr[data-user="agent@tlemcen.dz"]').innerText()).includes("utilisateur"), "the new user has the user role");
});

await journey("run a workflow", async () => {
  await page.getByRole("link", { name: "Workflows" }).click();
  const card = page.locator('form[data-workflow="synthese"]');
  await card.waitFor();
  await card.getByLabel("Entrée pour « synthese »").fill("les congés de maternité");
  // Every status the page shows is recorded as it appears, however fast they follow
  // each other (a replayed event stream can deliver several in one read).
  await page.evaluate(() => {
    window.agentStatuses = [];
    new MutationObserver((records) => {
      for (const record of records) {
        for (const node of record.addedNodes) {
          const agent = node.nodeType === 1 && node.closest("li[data-agent]");
          if (agent && node.dataset.status) window.agentStatuses.push(`${agent.dataset.agent}:${node.dataset.status}`);
        }
      }
    }).observe(document.getElementById("main"), { childList: true, subtree: true });
  });
  await card.getByRole("button", { name: "Lancer" }).click();
  await card.locator('li[data-agent="analyse"] [data-status="running"]').waitFor({ timeout: 20_000 })
    .then(() => shot("11-workflow-running"), () => {});
  await card.locator('h3[data-status="succeeded"]').waitFor(SLOW);
  const seen = await page.evaluate(() => window.agentStatuses);
  const at = (entry) => seen.indexOf(entry);
  for (const agent of ["collecte", "analyse", "redaction"]) {
    check(at(`${agent}:running`) >= 0 && at(`${agent}:running`) < at(`${agent}:succeeded`),
      `${agent} was seen running, then succeeded: ${seen}`);
  }
  check(at("collecte:succeeded") < at("analyse:running") && at("analyse:succeeded") < at("redaction:running"),
    `the agents ran in the graph's order: ${seen}`);
  check((await card.locator('li[data-agent="redaction"]').innerText()).includes("Rédige"), "the agents' outputs are shown");
  await assertContrast("workflow");
  await shot("12-workflow-succeeded");
});

await journey("delete a knowledge base", async () => {
  await page.getByRole("link", { name: "Bases de connaissances" }).click();
  await page.getByLabel("Nom", { exact: true }).fill("brouillon");
  await page.getByRole("button", { name: "Créer", exact: true }).click();
  await page.getByRole("heading", { level: 1, name: "brouillon" }).waitFor();
  await page.getByRole("link", { name: "Toutes les bases" }).click();
  page.once("dialog", (dialog) => dialog.accept());
  await page.locator('li[data-kb="brouillon"]').getByRole("button", { name: "Supprimer" }).click();
  await page.getByText("Base « brouillon » supprimée.").waitFor();
  await page.locator('li[data-kb="brouillon"]').waitFor({ state: "detached" });
  check((await page.locator('li[data-kb="reglements"]').count()) === 1, "the other knowledge base stays");
});

await journey("an expired session", async () => {
  // The API refuses the token (as it does once the JWT expires): back to the sign-in
  // form, told why, and back to the same page after signing in again.
  await page.route("**/api/workflows?*", (route) => route.fulfill({
    status: 401, contentType: "application/json",
    body: JSON.stringify({ status: "error", error: { code: "unauthorized", message: "the token has expired" } }),
  }));
  await page.getByRole("link", { name: "Workflows" }).click();
  await page.getByRole("heading", { level: 1, name: "Connexion à IAFactory" }).waitFor();
  check((await text("#notice")) === "Votre session a pris fin : reconnectez-vous.", `the message was: ${await text("#notice")}`);
  await page.unroute("**/api/workflows?*");
  await page.getByLabel("Adresse e-mail").fill(env("CONSOLE_EMAIL"));
  await page.getByLabel("Mot de passe").fill(env("CONSOLE_PASSWORD"));
  await page.getByRole("button", { name: "Se connecter" }).click();
  await page.locator('form[data-workflow="synthese"]').waitFor();
});

await journey("sign out", async () => {
  // Signing out ends the session on the server: a copy of the token stops working.
  let token = null;
  const remember = (request) => {
    const header = request.headers().authorization;
    if (header?.startsWith("Bearer ")) token = header.slice("Bearer ".length);
  };
  page.on("request", remember);
  await page.getByRole("link", { name: "Bases de connaissances" }).click();
  await page.getByRole("heading", { level: 1, name: "Bases de connaissances" }).waitFor();
  page.off("request", remember);
  check(token !== null, "the console sent its token");
  const before = await fetch(`${URL}/api/auth/me`, { headers: { Authorization: `Bearer ${token}` } });
  check(before.status === 200, `before signing out, the token answered ${before.status}`);
  await page.getByRole("button", { name: "Se déconnecter" }).click();
  await page.getByRole("heading", { level: 1, name: "Connexion à IAFactory" }).waitFor();
  check((await text("#notice")) === "Vous êtes déconnecté.", `the message was: ${await text("#notice")}`);
  const after = await fetch(`${URL}/api/auth/me`, { headers: { Authorization: `Bearer ${token}` } });
  check(after.status === 401, `after signing out, the copied token answered ${after.status}`);
  await page.getByLabel("Adresse e-mail").fill(env("CONSOLE_EMAIL"));
  await page.getByLabel("Mot de passe").fill(env("CONSOLE_PASSWORD"));
  await page.getByRole("button", { name: "Se connecter" }).click();
  await page.getByRole("heading", { level: 1, name: "Bases de connaissances" }).waitFor();
});

await journey("phone width", async () => {
  await page.setViewportSize({ width: 390, height: 844 });
  for (const [hash, heading, name] of [["#/kbs", "Bases de connaissances", "13-phone-knowledge-bases"],
    ["#/chat", "Interroger vos documents", "14-phone-chat"], ["#/admin", "Clés d’API", "15-phone-admin"]]) {
    await page.evaluate((hash) => { location.hash = hash; }, hash);
    await page.getByRole("heading", { name: heading }).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `${hash}: the page is ${overflow}px wider than the phone`);
    await shot(name);
  }
  await page.getByLabel("Langue").selectOption("ar");
  await page.getByRole("heading", { level: 1, name: "الإدارة" }).waitFor();
  await page.evaluate(() => { location.hash = "#/chat"; });
  await page.getByRole("heading", { level: 1, name: "اسأل وثائقك" }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 0, `Arabic chat: the page is ${overflow}px wider than the phone`);
  await assertContrast("phone, Arabic");
  await shot("16-phone-chat-arabic");
});

check(problems.length === 0, problems.join("\n"));
await browser.close();
