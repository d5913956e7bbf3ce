// The IAFactory web console: one page, no framework, no build step. It calls the
// platform API's JSON endpoints. The session token lives in this page's memory only
// (never in localStorage or a cookie): closing or reloading the tab signs out.
"use strict";

const STRINGS = {
  en: {
    "skip": "Skip to content", "lang": "Language", "nav": "Main",
    "nav.kbs": "Knowledge bases", "nav.chat": "Ask", "nav.workflows": "Workflows", "nav.admin": "Administration",
    "nav.logout": "Sign out",
    "login.title": "Sign in to IAFactory", "login.email": "E-mail address", "login.password": "Password",
    "login.submit": "Sign in",
    "kbs.title": "Knowledge bases", "kbs.empty": "No knowledge base yet: create the first one.",
    "kbs.create": "New knowledge base", "kbs.name": "Name", "kbs.description": "Description (optional)",
    "kbs.submit": "Create", "kbs.delete": "Delete", "kbs.confirm": "Delete “{name}” and all its documents?",
    "kbs.counts": "{documents} documents · {chunks} passages", "kbs.created": "Knowledge base “{name}” created.",
    "kbs.deleted": "Knowledge base “{name}” deleted.", "kbs.open": "Open “{name}”",
    "kb.drop": "Drop files here", "kb.or": "or", "kb.choose": "choose files",
    "kb.types": "PDF, DOCX, HTML, Markdown or text; several at once.",
    "kb.uploads": "Uploads", "kb.documents": "Documents", "kb.noDocs": "No document yet.",
    "kb.back": "All knowledge bases", "kb.ask": "Ask this knowledge base",
    "doc.title": "Title", "doc.status": "Status", "doc.language": "Language", "doc.chunks": "Passages",
    "doc.size": "Size", "doc.delete": "Delete", "doc.confirm": "Delete “{name}”?",
    "status.pending": "pending", "status.processing": "processing", "status.ready": "ready", "status.failed": "failed",
    "status.running": "running", "status.succeeded": "succeeded", "status.skipped": "skipped",
    "status.cancelled": "cancelled",
    "upload.sending": "sending {percent}%", "upload.sent": "sent", "upload.duplicate": "already there",
    "upload.failed": "failed",
    "chat.title": "Ask your documents", "chat.in": "Search in", "chat.model": "Model", "chat.model.default": "Default (set by the knowledge base, or the organisation’s model)", "chat.question": "Your question",
    "chat.ask": "Ask", "chat.answer": "Answer", "chat.sources": "Sources", "chat.searching": "Searching…",
    "chat.extractive": "No language model answered: here are the most relevant passages.",
    "chat.replaced": "The model's answer did not match your documents: here are the most relevant passages instead.",
    "chat.noKb": "Choose at least one knowledge base.", "chat.noKbs": "Create a knowledge base and add documents first.",
    "chat.passage": "[{n}] {title}", "chat.page": "page {page}", "chat.close": "Close",
    "wf.title": "Workflows", "wf.empty": "No workflow yet. Workflows are defined through the API or as Kubernetes resources.",
    "wf.agents": "{count} agents", "wf.input": "Input for “{name}”", "wf.run": "Run", "wf.run.status": "Run {status}",
    "wf.output": "Output",
    "admin.title": "Administration", "users.title": "Users", "users.email": "E-mail address", "users.role": "Role",
    "users.password": "Password (10 characters or more)", "users.add": "Add the user", "users.added": "User {email} added.", "users.remove": "Remove", "users.confirm": "Remove {email}? They can no longer sign in.",
    "role.user": "user", "role.tenant_admin": "tenant admin", "role.admin": "platform admin",
    "keys.title": "API keys", "keys.name": "Name", "keys.scopes": "Scopes", "keys.create": "Create the key",
    "keys.once": "Copy this secret now: it will not be shown again.", "keys.secret": "Secret of “{name}”",
    "keys.copy": "Copy", "keys.prefix": "Starts with", "keys.used": "Requests", "keys.revoke": "Revoke", "keys.revoked": "revoked",
    "keys.confirm": "Revoke “{name}”? Programs using it stop working at once.", "keys.active": "active",
    "scope.query": "ask and search", "scope.ingest": "upload documents", "scope.admin": "administer",
    "usage.title": "Usage over the last 7 days", "usage.requests": "Requests", "usage.errors": "Server errors",
    "usage.endpoint": "Endpoint", "usage.p95": "p95 (ms)", "usage.none": "No request recorded yet.",
    "err.login": "Wrong e-mail address or password.",
    "err.network": "Network error: the server could not be reached. Check your connection and try again.",
    "err.interrupted": "The answer was interrupted by a network error. Try again.",
    "err.not_found": "Not found: this page does not exist, or it is not in your organisation.",
    "err.payload_too_large": "{name}: the file is too large (the limit is {limit}).",
    "err.unsupported_media_type": "{name}: this type of file is not supported.",
    "err.forbidden": "You are not allowed to do this.", "err.conflict": "This name is already taken.",
    "err.rate_limited": "Too many requests: wait a moment, then try again.",
    "err.validation_failed": "Check the field “{field}”: {message}",
    "err.session": "Your session has ended: sign in again.",
    "session.signedOut": "You are signed out.",
    "session.signOutLocal": "You are signed out on this device, but the server could not be reached: the session stays valid until it expires.",
    "err.unavailable": "The service is not available right now. Try again in a moment.",
    "err.other": "Something went wrong ({code}).",
  },
  fr: {
    "skip": "Aller au contenu", "lang": "Langue", "nav": "Principal",
    "nav.kbs": "Bases de connaissances", "nav.chat": "Questions", "nav.workflows": "Workflows",
    "nav.admin": "Administration", "nav.logout": "Se déconnecter",
    "login.title": "Connexion à IAFactory", "login.email": "Adresse e-mail", "login.password": "Mot de passe",
    "login.submit": "Se connecter",
    "kbs.title": "Bases de connaissances", "kbs.empty": "Aucune base de connaissances : créez la première.",
    "kbs.create": "Nouvelle base de connaissances", "kbs.name": "Nom", "kbs.description": "Description (facultative)",
    "kbs.submit": "Créer", "kbs.delete": "Supprimer", "kbs.confirm": "Supprimer « {name} » et tous ses documents ?",
    "kbs.counts": "{documents} documents · {chunks} passages", "kbs.created": "Base « {name} » créée.",
    "kbs.deleted": "Base « {name} » supprimée.", "kbs.open": "Ouvrir « {name} »",
    "kb.drop": "Déposez des fichiers ici", "kb.or": "ou", "kb.choose": "choisissez des fichiers",
    "kb.types": "PDF, DOCX, HTML, Markdown ou texte ; plusieurs à la fois.",
    "kb.uploads": "Envois", "kb.documents": "Documents", "kb.noDocs": "Aucun document pour l’instant.",
    "kb.back": "Toutes les bases", "kb.ask": "Interroger cette base",
    "doc.title": "Titre", "doc.status": "État", "doc.language": "Langue", "doc.chunks": "Passages",
    "doc.size": "Taille", "doc.delete": "Supprimer", "doc.confirm": "Supprimer « {name} » ?",
    "status.pending": "en attente", "status.processing": "en traitement", "status.ready": "prêt",
    "status.failed": "échec", "status.running": "en cours", "status.succeeded": "réussi", "status.skipped": "ignoré",
    "status.cancelled": "annulé",
    "upload.sending": "envoi {percent} %", "upload.sent": "envoyé", "upload.duplicate": "déjà présent",
    "upload.failed": "échec",
    "chat.title": "Interroger vos documents", "chat.in": "Chercher dans", "chat.model": "Modèle", "chat.model.default": "Par défaut (celui de la base de connaissances, ou le modèle de l’organisation)", "chat.question": "Votre question",
    "chat.ask": "Demander", "chat.answer": "Réponse", "chat.sources": "Sources", "chat.searching": "Recherche…",
    "chat.extractive": "Aucun modèle de langue n’a répondu : voici les passages les plus pertinents.",
    "chat.replaced": "La réponse du modèle ne correspondait pas à vos documents : voici plutôt les passages les plus pertinents.",
    "chat.noKb": "Choisissez au moins une base de connaissances.",
    "chat.noKbs": "Créez d’abord une base de connaissances et ajoutez-y des documents.",
    "chat.passage": "[{n}] {title}", "chat.page": "page {page}", "chat.close": "Fermer",
    "wf.title": "Workflows", "wf.empty": "Aucun workflow. Les workflows se définissent par l’API ou comme ressources Kubernetes.",
    "wf.agents": "{count} agents", "wf.input": "Entrée pour « {name} »", "wf.run": "Lancer",
    "wf.run.status": "Exécution : {status}", "wf.output": "Résultat",
    "admin.title": "Administration", "users.title": "Utilisateurs", "users.email": "Adresse e-mail",
    "users.role": "Rôle", "users.password": "Mot de passe (10 caractères ou plus)", "users.add": "Ajouter l’utilisateur",
    "users.added": "Utilisateur {email} ajouté.", "users.remove": "Retirer", "users.confirm": "Retirer {email} ? Cette personne ne pourra plus se connecter.",
    "role.user": "utilisateur", "role.tenant_admin": "administrateur", "role.admin": "administrateur de la plateforme",
    "keys.title": "Clés d’API", "keys.name": "Nom", "keys.scopes": "Droits", "keys.create": "Créer la clé",
    "keys.once": "Copiez ce secret maintenant : il ne sera plus jamais affiché.", "keys.secret": "Secret de « {name} »",
    "keys.copy": "Copier", "keys.prefix": "Commence par", "keys.used": "Requêtes", "keys.revoke": "Révoquer", "keys.revoked": "révoquée",
    "keys.confirm": "Révoquer « {name} » ? Les programmes qui l’utilisent s’arrêtent aussitôt.", "keys.active": "active",
    "scope.query": "interroger", "scope.ingest": "envoyer des documents", "scope.admin": "administrer",
    "usage.title": "Utilisation sur 7 jours", "usage.requests": "Requêtes", "usage.errors": "Erreurs serveur",
    "usage.endpoint": "Point d’accès", "usage.p95": "p95 (ms)", "usage.none": "Aucune requête enregistrée.",
    "err.login": "Adresse e-mail ou mot de passe incorrect.",
    "err.network": "Erreur réseau : le serveur est injoignable. Vérifiez la connexion et réessayez.",
    "err.interrupted": "La réponse a été interrompue par une erreur réseau. Réessayez.",
    "err.not_found": "Introuvable : cette page n’existe pas ou n’appartient pas à votre organisation.",
    "err.payload_too_large": "{name} : le fichier est trop volumineux (limite : {limit}).",
    "err.unsupported_media_type": "{name} : ce type de fichier n’est pas pris en charge.",
    "err.forbidden": "Vous n’avez pas le droit de faire cela.", "err.conflict": "Ce nom est déjà pris.",
    "err.rate_limited": "Trop de requêtes : patientez un instant, puis réessayez.",
    "err.validation_failed": "Vérifiez le champ « {field} » : {message}",
    "err.session": "Votre session a pris fin : reconnectez-vous.",
    "session.signedOut": "Vous êtes déconnecté.",
    "session.signOutLocal": "Vous êtes déconnecté sur cet appareil, mais le serveur est injoignable : la session reste valable jusqu’à son expiration.",
    "err.unavailable": "Le service est momentanément indisponible. Réessayez dans un instant.",
    "err.other": "Une erreur s’est produite ({code}).",
  },
  ar: {
    "skip": "انتقل إلى المحتوى", "lang": "اللغة", "nav": "القائمة الرئيسية",
    "nav.kbs": "قواعد المعرفة", "nav.chat": "اسأل", "nav.workflows": "مسارات العمل", "nav.admin": "الإدارة",
    "nav.logout": "تسجيل الخروج",
    "login.title": "تسجيل الدخول إلى IAFactory", "login.email": "البريد الإلكتروني", "login.password": "كلمة المرور",
    "login.submit": "دخول",
    "kbs.title": "قواعد المعرفة", "kbs.empty": "لا توجد قاعدة معرفة بعد: أنشئ الأولى.",
    "kbs.create": "قاعدة معرفة جديدة", "kbs.name": "الاسم", "kbs.description": "الوصف (اختياري)",
    "kbs.submit": "إنشاء", "kbs.delete": "حذف", "kbs.confirm": "حذف «{name}» مع كل وثائقها؟",
    "kbs.counts": "{documents} وثيقة · {chunks} مقطع", "kbs.created": "أُنشئت قاعدة المعرفة «{name}».",
    "kbs.deleted": "حُذفت قاعدة المعرفة «{name}».", "kbs.open": "فتح «{name}»",
    "kb.drop": "أفلت الملفات هنا", "kb.or": "أو", "kb.choose": "اختر ملفات",
    "kb.types": "PDF أو DOCX أو HTML أو Markdown أو نص؛ عدة ملفات دفعة واحدة.",
    "kb.uploads": "الإرسال", "kb.documents": "الوثائق", "kb.noDocs": "لا توجد وثائق بعد.",
    "kb.back": "كل قواعد المعرفة", "kb.ask": "اسأل هذه القاعدة",
    "doc.title": "العنوان", "doc.status": "الحالة", "doc.language": "اللغة", "doc.chunks": "المقاطع",
    "doc.size": "الحجم", "doc.delete": "حذف", "doc.confirm": "حذف «{name}»؟",
    "status.pending": "في الانتظار", "status.processing": "قيد المعالجة", "status.ready": "جاهزة",
    "status.failed": "فشلت", "status.running": "قيد التنفيذ", "status.succeeded": "نجح", "status.skipped": "تُخطّي",
    "status.cancelled": "أُلغي",
    "upload.sending": "جارٍ الإرسال {percent}٪", "upload.sent": "أُرسل", "upload.duplicate": "موجود مسبقًا",
    "upload.failed": "فشل",
    "chat.title": "اسأل وثائقك", "chat.in": "ابحث في", "chat.model": "النموذج", "chat.model.default": "الافتراضي (نموذج قاعدة المعرفة أو نموذج المؤسسة)", "chat.question": "سؤالك", "chat.ask": "اسأل",
    "chat.answer": "الإجابة", "chat.sources": "المصادر", "chat.searching": "جارٍ البحث…",
    "chat.extractive": "لم يُجب أي نموذج لغوي: هذه أكثر المقاطع صلة بسؤالك.",
    "chat.replaced": "لم تتطابق إجابة النموذج مع وثائقك: هذه بدلاً منها أكثر المقاطع صلة بسؤالك.",
    "chat.noKb": "اختر قاعدة معرفة واحدة على الأقل.", "chat.noKbs": "أنشئ قاعدة معرفة وأضف إليها وثائق أولًا.",
    "chat.passage": "[{n}] {title}", "chat.page": "صفحة {page}", "chat.close": "إغلاق",
    "wf.title": "مسارات العمل", "wf.empty": "لا توجد مسارات عمل بعد. تُعرَّف عبر الواجهة البرمجية أو كموارد Kubernetes.",
    "wf.agents": "{count} وكلاء", "wf.input": "المدخل لـ«{name}»", "wf.run": "تشغيل", "wf.run.status": "التشغيل: {status}",
    "wf.output": "النتيجة",
    "admin.title": "الإدارة", "users.title": "المستخدمون", "users.email": "البريد الإلكتروني", "users.role": "الدور",
    "users.password": "كلمة المرور (10 أحرف على الأقل)", "users.add": "إضافة المستخدم", "users.added": "أُضيف المستخدم {email}.", "users.remove": "إزالة", "users.confirm": "إزالة {email}؟ لن يتمكن من تسجيل الدخول بعد الآن.",
    "role.user": "مستخدم", "role.tenant_admin": "مدير المؤسسة", "role.admin": "مدير المنصة",
    "keys.title": "مفاتيح الواجهة البرمجية", "keys.name": "الاسم", "keys.scopes": "الصلاحيات", "keys.create": "إنشاء المفتاح",
    "keys.once": "انسخ هذا السر الآن: لن يُعرض مرة أخرى.", "keys.secret": "سر «{name}»",
    "keys.copy": "نسخ", "keys.prefix": "يبدأ بـ", "keys.used": "الطلبات", "keys.revoke": "إلغاء", "keys.revoked": "مُلغى",
    "keys.confirm": "إلغاء «{name}»؟ ستتوقف البرامج التي تستخدمه فورًا.", "keys.active": "فعّال",
    "scope.query": "السؤال والبحث", "scope.ingest": "إرسال الوثائق", "scope.admin": "الإدارة",
    "usage.title": "الاستخدام خلال 7 أيام", "usage.requests": "الطلبات", "usage.errors": "أخطاء الخادم",
    "usage.endpoint": "نقطة الوصول", "usage.p95": "p95 (ms)", "usage.none": "لم يُسجَّل أي طلب بعد.",
    "err.login": "البريد الإلكتروني أو كلمة المرور غير صحيحة.",
    "err.network": "خطأ في الشبكة: تعذر الوصول إلى الخادم. تحقق من الاتصال وأعد المحاولة.",
    "err.interrupted": "انقطعت الإجابة بسبب خطأ في الشبكة. أعد المحاولة.",
    "err.not_found": "غير موجود: هذه الصفحة غير موجودة أو لا تتبع مؤسستك.",
    "err.payload_too_large": "{name}: الملف كبير جدًا (الحد الأقصى {limit}).",
    "err.unsupported_media_type": "{name}: هذا النوع من الملفات غير مدعوم.",
    "err.forbidden": "لا تملك صلاحية القيام بهذا.", "err.conflict": "هذا الاسم مستخدم من قبل.",
    "err.rate_limited": "طلبات كثيرة جدًا: انتظر قليلًا ثم أعد المحاولة.",
    "err.validation_failed": "تحقق من الحقل «{field}»: {message}",
    "err.session": "انتهت جلستك: سجّل الدخول من جديد.",
    "session.signedOut": "تم تسجيل خروجك.",
    "session.signOutLocal": "تم تسجيل خروجك على هذا الجهاز، لكن تعذر الوصول إلى الخادم: تبقى الجلسة صالحة حتى انتهاء مدتها.",
    "err.unavailable": "الخدمة غير متاحة حاليًا. أعد المحاولة بعد قليل.",
    "err.other": "حدث خطأ ({code}).",
  },
};
const LANGUAGES = ["ar", "fr", "en"];
const RTL = new Set(["ar"]);
// Documents still being ingested are polled this often; the per-address rate limit
// (60 a minute by default) is shared with everything else the page does.
const POLL_MS = 2000;

const session = { token: null, me: null };
let lang = pickLanguage();
let leaveView = () => {};

function pickLanguage() {
  // Only the interface language is remembered across visits; it is not a secret.
  const saved = window.localStorage.getItem("iaf.console.lang");
  if (LANGUAGES.includes(saved)) return saved;
  for (const wanted of navigator.languages || []) {
    const code = wanted.slice(0, 2).toLowerCase();
    if (LANGUAGES.includes(code)) return code;
  }
  return "en";
}

function t(key, vars = {}) {
  const text = STRINGS[lang][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ""));
}

// Builds an element: h("button", {class: "quiet", onclick}, "text", child...).
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(status) {
  return h("span", { class: `badge s-${status}`, "data-status": status }, t(`status.${status}`));
}

// A notice lasts until the next page, or the one after when it announces the move
// itself (carry: "created", then the new page opens).
let carryNotice = false;

function notify(message, kind = "info", carry = false) {
  carryNotice = carry;
  const notice = document.getElementById("notice");
  notice.className = message ? kind : "";
  notice.setAttribute("role", kind === "error" ? "alert" : "status");
  notice.textContent = message || "";
}

// ---- the API ---------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, code, message, field) {
    super(message);
    Object.assign(this, { status, code, field });
  }
}

class NetworkFailure extends Error {}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new NetworkFailure(String(error));
  }
  return unwrap(response, path);
}

async function unwrap(response, path) {
  let payload = null;
  try { payload = await response.json(); } catch { /* not JSON: judged by status */ }
  if (response.ok) return payload?.data;
  const error = payload?.error || {};
  const failure = new ApiFailure(response.status, error.code || `http_${response.status}`, error.message || "",
    error.fields ? Object.keys(error.fields)[0] : undefined);
  if (response.status === 401 && path !== "/api/auth/login") expireSession();
  throw failure;
}

function describe(error, vars = {}) {
  if (error instanceof NetworkFailure) return t("err.network");
  if (error instanceof ApiFailure) {
    const key = `err.${error.code}`;
    if (STRINGS.en[key]) return t(key, { field: error.field || "", message: error.message, ...vars });
    return t("err.other", { code: error.status });
  }
  console.error(error);
  return t("err.other", { code: String(error) });
}

function expireSession() {
  if (location.hash !== "#/login") session.after = location.hash;
  session.token = null;
  session.me = null;
  notify(t("err.session"), "error", true);
  location.hash = "#/login";
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { event: "message", data: [] };
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data.push(text);
        else if (field === "event") event.event = text;
        else if (field === "id") event.id = text;
      }
      if (event.data.length) yield { ...event, data: event.data.join("\n") };
    }
  }
}

async function streamRequest(method, path, body, signal) {
  const headers = { Accept: "text/event-stream", Authorization: `Bearer ${session.token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new NetworkFailure(String(error));
  }
  if (!response.ok) await unwrap(response, path);
  return response;
}

// ---- the shell -------------------------------------------------------------------

function applyLanguage() {
  document.documentElement.lang = lang;
  document.documentElement.dir = RTL.has(lang) ? "rtl" : "ltr";
  document.getElementById("lang").value = lang;
  document.getElementById("lang-label").textContent = t("lang");
  document.querySelector(".skip").textContent = t("skip");
  document.getElementById("nav").setAttribute("aria-label", t("nav"));
  document.getElementById("dialog-close").textContent = t("chat.close");
}

function renderNav(active) {
  const nav = document.getElementById("nav");
  nav.replaceChildren();
  if (!session.token) return;
  const links = [["kbs", "#/kbs"], ["chat", "#/chat"], ["workflows", "#/workflows"]];
  if (isAdmin()) links.push(["admin", "#/admin"]);
  for (const [name, href] of links) {
    nav.append(h("a", { href, "aria-current": active === name ? "page" : null }, t(`nav.${name}`)));
  }
  nav.append(h("span", { class: "who" }, session.me?.user?.email || ""));
  nav.append(h("button", { type: "button", onclick: signOut }, t("nav.logout")));
}

function isAdmin() {
  return ["tenant_admin", "admin"].includes(session.me?.user?.role);
}

// The token is forgotten here whatever happens; the server is asked to end every
// token of this user, so a copy of it (a shared machine, a proxy log) stops working too.
async function signOut() {
  let ended = true;
  try {
    await api("POST", "/api/auth/logout");
  } catch (error) {
    ended = error instanceof ApiFailure && error.status === 401;
  }
  session.token = null;
  session.me = null;
  notify(t(ended ? "session.signedOut" : "session.signOutLocal"), ended ? "info" : "error", true);
  location.hash = "#/login";
}

function view(title, ...children) {
  const main = document.getElementById("main");
  main.classList.remove("narrow");
  main.replaceChildren(h("h1", {}, title), ...children);
  document.title = `${title} · IAFactory`;
}

const ROUTES = [
  [/^#\/login$/, "login", showLogin],
  [/^#\/kbs$/, "kbs", showKnowledgeBases],
  [/^#\/kbs\/([0-9a-f-]{36})$/, "kbs", showKnowledgeBase],
  [/^#\/chat(?:\/([0-9a-f-]{36}))?$/, "chat", showChat],
  [/^#\/workflows$/, "workflows", showWorkflows],
  [/^#\/admin$/, "admin", showAdmin],
];

async function route() {
  if (carryNotice) carryNotice = false;
  else notify("");
  leaveView();
  leaveView = () => {};
  const hash = location.hash || "#/kbs";
  if (!session.token && hash !== "#/login") {
    session.after = hash;
    location.replace("#/login");
    return;
  }
  const match = ROUTES.map(([pattern, name, show]) => [hash.match(pattern), name, show]).find(([m]) => m);
  renderNav(match?.[1]);
  if (!match) {
    view(t("err.not_found"));
    return;
  }
  const [found, , show] = match;
  try {
    await show(...found.slice(1));
  } catch (error) {
    if (error instanceof ApiFailure && error.status === 401) return;
    view(describe(error), h("p", {}, h("a", { href: "#/kbs" }, t("kb.back"))));
    // Focus moves to the message, so that a screen reader reads it out.
    document.getElementById("main").focus();
  }
}

// ---- login -----------------------------------------------------------------------

function showLogin() {
  const error = h("p", { class: "alert error", role: "alert", hidden: true, id: "login-error" });
  const email = h("input", { type: "email", name: "email", autocomplete: "username", required: true });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
  const submit = h("button", { type: "submit" }, t("login.submit"));
  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    try {
      const data = await api("POST", "/api/auth/login", { email: email.value, password: password.value });
      session.token = data.access_token;
      session.me = await api("GET", "/api/auth/me");
      notify("");
      const next = session.after && session.after !== "#/login" ? session.after : "#/kbs";
      session.after = null;
      location.hash = next;
    } catch (failure) {
      error.textContent = failure instanceof ApiFailure && failure.status === 401 ? t("err.login") : describe(failure);
      error.hidden = false;
      password.focus();
    } finally {
      submit.disabled = false;
    }
  } },
    h("label", {}, t("login.email"), email),
    h("p"),
    h("label", {}, t("login.password"), password),
    h("p"),
    error,
    submit);
  view(t("login.title"), form);
  document.getElementById("main").classList.add("narrow");
  email.focus();
}

// ---- knowledge bases -------------------------------------------------------------

async function showKnowledgeBases() {
  
  const bases = await api("GET", "/api/knowledge-bases?limit=100&sort=name&order=asc");
  const name = h("input", { name: "name", required: true, maxlength: 200 });
  const description = h("input", { name: "description", maxlength: 2000 });
  const error = h("p", { class: "alert error", role: "alert", hidden: true });
  const create = h("form", { class: "card", "aria-labelledby": "kb-create-title", onsubmit: async (event) => {
    event.preventDefault();
    error.hidden = true;
    try {
      const created = await api("POST", "/api/knowledge-bases", { name: name.value.trim(), description: description.value.trim() || undefined });
      notify(t("kbs.created", { name: name.value.trim() }), "info", true);
      location.hash = `#/kbs/${created.id}`;
    } catch (failure) {
      error.textContent = describe(failure);
      error.hidden = false;
    }
  } },
    h("h2", { id: "kb-create-title" }, t("kbs.create")),
    h("div", { class: "row" },
      h("label", {}, t("kbs.name"), name),
      h("label", {}, t("kbs.description"), description),
      h("button", { type: "submit" }, t("kbs.submit"))),
    error);
  const cards = bases.length
    ? h("ul", { class: "grid plain", "aria-label": t("kbs.title") }, bases.map((kb) =>
      h("li", { class: "card", "data-kb": kb.name },
        h("h2", {}, h("a", { href: `#/kbs/${kb.id}`, "aria-label": t("kbs.open", { name: kb.name }) }, kb.name)),
        kb.description ? h("p", { class: "muted", dir: "auto" }, kb.description) : null,
        h("p", {}, t("kbs.counts", { documents: kb.documents, chunks: kb.chunks })),
        h("div", { class: "row" },
          h("a", { class: "button", href: `#/chat/${kb.id}` }, t("kb.ask")),
          h("button", { type: "button", class: "danger", onclick: async () => {
            if (!confirm(t("kbs.confirm", { name: kb.name }))) return;
            try {
              await api("DELETE", `/api/knowledge-bases/${kb.id}`);
              notify(t("kbs.deleted", { name: kb.name }), "info", true);
              route();
            } catch (failure) { notify(describe(failure), "error"); }
          } }, t("kbs.delete"))))))
    : h("p", { class: "card muted" }, t("kbs.empty"));
  view(t("kbs.title"), create, cards);
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

async function showKnowledgeBase(id) {
  
  const kb = await api("GET", `/api/knowledge-bases/${id}`);
  const uploads = h("ul", { class: "uploads", "aria-label": t("kb.uploads") });
  const input = h("input", { type: "file", id: "file-input", multiple: true,
    accept: ".pdf,.docx,.html,.htm,.md,.txt,.csv,application/pdf,text/plain" });
  input.addEventListener("change", () => { sendFiles(input.files); input.value = ""; });
  const zone = h("div", { class: "drop", id: "drop-zone" },
    // The input precedes its label so that its keyboard focus can ring the label.
    h("p", {}, h("strong", {}, t("kb.drop")), " ", t("kb.or"), " ",
      input, h("label", { for: "file-input", class: "button" }, t("kb.choose"))),
    h("p", { class: "muted" }, t("kb.types")));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    sendFiles(event.dataTransfer.files);
  });
  const table = h("div", { class: "table" });
  let timer = null;
  let alive = true;
  leaveView = () => { alive = false; clearTimeout(timer); };

  async function refresh() {
    clearTimeout(timer);
    let documents;
    try {
      documents = await api("GET", `/api/knowledge-bases/${id}/documents?limit=100&sort=created_at&order=desc`);
    } catch (failure) {
      if (alive) notify(describe(failure), "error");
      return;
    }
    if (!alive) return;
    table.replaceChildren(documents.length ? h("table", {},
      h("caption", { class: "visually-hidden" }, t("kb.documents")),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col" }, t("doc.title")), h("th", { scope: "col" }, t("doc.status")),
        h("th", { scope: "col", class: "wide" }, t("doc.language")), h("th", { scope: "col", class: "wide" }, t("doc.chunks")),
        h("th", { scope: "col", class: "wide" }, t("doc.size")), h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, t("doc.delete"))))),
      h("tbody", {}, documents.map((doc) => h("tr", { "data-document": doc.title },
        h("td", {}, h("bdi", {}, doc.title), doc.error ? h("div", { class: "error-text", role: "note" }, doc.error) : null),
        h("td", {}, badge(doc.status)),
        h("td", { class: "wide" }, doc.language || "—"),
        h("td", { class: "wide" }, doc.chunk_count),
        h("td", { class: "wide nowrap" }, formatSize(doc.size_bytes)),
        h("td", {}, h("button", { type: "button", class: "danger", "aria-label": `${t("doc.delete")} ${doc.title}`, onclick: async () => {
          if (!confirm(t("doc.confirm", { name: doc.title }))) return;
          try { await api("DELETE", `/api/knowledge-bases/${id}/documents/${doc.id}`); refresh(); } catch (failure) { notify(describe(failure), "error"); }
        } }, "✕"))))))
      : h("p", { class: "muted" }, t("kb.noDocs")));
    if (documents.some((d) => d.status === "pending" || d.status === "processing")) {
      timer = setTimeout(refresh, POLL_MS);
    }
  }

  function sendFiles(files) {
    const limit = Number(document.body.dataset.maxUploadBytes) || Infinity;
    for (const file of files) {
      const bar = h("progress", { max: 100, value: 0, "aria-label": file.name });
      const state = h("span", { class: "state" }, t("upload.sending", { percent: 0 }));
      const item = h("li", { "data-upload": file.name }, h("span", {}, h("bdi", {}, file.name)), state, bar);
      uploads.prepend(item);
      if (file.size > limit) {
        bar.remove();
        state.replaceChildren(h("span", { class: "error-text", role: "alert" },
          describe(new ApiFailure(413, "payload_too_large", ""), { name: file.name, limit: formatSize(limit) })));
        item.dataset.result = "failed";
        continue;
      }
      const form = new FormData();
      form.append("file", file, file.name);
      // XMLHttpRequest, not fetch: only it reports upload progress.
      const request = new XMLHttpRequest();
      request.open("POST", `/api/knowledge-bases/${id}/documents`);
      request.setRequestHeader("Authorization", `Bearer ${session.token}`);
      request.setRequestHeader("Accept", "application/json");
      request.upload.onprogress = (event) => {
        if (!event.lengthComputable) return;
        const percent = Math.round((event.loaded / event.total) * 100);
        bar.value = percent;
        state.textContent = t("upload.sending", { percent });
      };
      request.onload = () => {
        let payload = null;
        try { payload = JSON.parse(request.responseText); } catch { /* judged by status */ }
        bar.value = 100;
        if (request.status >= 200 && request.status < 300) {
          state.replaceChildren(payload?.data?.duplicate ? t("upload.duplicate") : t("upload.sent"));
          item.dataset.result = "sent";
          refresh();
        } else {
          const error = payload?.error || {};
          const failure = new ApiFailure(request.status, error.code || `http_${request.status}`, error.message || "");
          if (request.status === 401) { expireSession(); return; }
          state.replaceChildren(h("span", { class: "error-text", role: "alert" },
            describe(failure, { name: file.name, limit: formatSize(Number.isFinite(limit) ? limit : file.size) })));
          item.dataset.result = "failed";
        }
      };
      request.onerror = () => {
        state.replaceChildren(h("span", { class: "error-text", role: "alert" }, t("err.network")));
        item.dataset.result = "failed";
      };
      request.send(form);
    }
  }

  view(kb.name,
    h("p", {}, h("a", { href: "#/kbs" }, `← ${t("kb.back")}`), " · ", h("a", { href: `#/chat/${id}` }, t("kb.ask"))),
    kb.description ? h("p", { class: "muted", dir: "auto" }, kb.description) : null,
    h("section", { class: "card", "aria-labelledby": "uploads-title" }, h("h2", { id: "uploads-title" }, t("kb.uploads")), zone, uploads),
    h("section", { class: "card", "aria-labelledby": "documents-title" }, h("h2", { id: "documents-title" }, t("kb.documents")), table));
  await refresh();
}

// ---- chat ------------------------------------------------------------------------

async function showChat(preselected) {
  
  const bases = await api("GET", "/api/knowledge-bases?limit=100&sort=name&order=asc");
  if (!bases.length) {
    view(t("chat.title"), h("p", { class: "card" }, t("chat.noKbs"), " ", h("a", { href: "#/kbs" }, t("nav.kbs"))));
    return;
  }
  const boxes = bases.map((kb) => h("input", { type: "checkbox", value: kb.id,
    checked: preselected ? kb.id === preselected : bases.length === 1 }));
  // The models this organisation may ask: its own model server's, and the defaults its
  // knowledge bases set (an external provider is only offered with a model to ask).
  const providers = await api("GET", "/api/providers").catch(() => []);
  const allowed = new Set(providers.filter((p) => p.allowed).map((p) => p.name));
  const models = providers.filter((p) => p.allowed && p.default_model)
    .map((p) => ({ provider: p.name, model: p.default_model }));
  for (const kb of bases) {
    const g = kb.generation;
    if (g && allowed.has(g.provider) && !models.some((m) => m.provider === g.provider && m.model === g.model)) models.push(g);
  }
  const modelSelect = h("select", { name: "model" }, h("option", { value: "" }, t("chat.model.default")),
    models.map((m, i) => h("option", { value: String(i) }, `${m.provider} · ${m.model}`)));
  const question = h("textarea", { name: "question", dir: "auto", required: true, maxlength: 2000, rows: 3 });
  const ask = h("button", { type: "submit" }, t("chat.ask"));
  const conversation = h("div", { id: "conversation", "aria-live": "polite" });
  let controller = null;
  leaveView = () => controller?.abort();

  const form = h("form", { class: "card", onsubmit: async (event) => {
    event.preventDefault();
    const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
    if (!chosen.length) { notify(t("chat.noKb"), "error"); return; }
    if (!question.value.trim()) return;
    notify("");
    ask.disabled = true;
    controller = new AbortController();
    const asked = question.value.trim();
    const answer = h("div", { class: "answer", dir: "auto", "aria-busy": "true" }, t("chat.searching"));
    const sources = h("ol", { class: "sources", "aria-label": t("chat.sources") });
    const note = h("p", { class: "muted", hidden: true });
    const problem = h("p", { class: "alert error", role: "alert", hidden: true });
    const turn = h("article", { class: "card turn" },
      h("h2", { dir: "auto" }, asked), answer, note, sources, problem);
    conversation.prepend(turn);
    let text = "";
    try {
      const picked = models[Number(modelSelect.value)];
      const request = { query: asked, knowledge_base_ids: chosen, stream: true };
      if (modelSelect.value !== "" && picked) Object.assign(request, picked);
      const response = await streamRequest("POST", "/api/query", request, controller.signal);
      let finished = false;
      for await (const message of serverSentEvents(response)) {
        if (message.event === "token") {
          text += message.data;
          answer.textContent = text;
        } else if (message.event === "replace") {
          // The model's answer failed the grounding check: the passages take its place.
          text = message.data;
          answer.textContent = text;
        } else if (message.event === "done") {
          const done = JSON.parse(message.data);
          finished = true;
          answer.setAttribute("dir", done.language === "ar" || (!done.language && /[\u0600-\u06FF]/.test(text)) ? "rtl" : "auto");
          if (done.language) answer.setAttribute("lang", done.language);
          note.hidden = !done.extractive;
          note.textContent = t(["wrong_script", "ungrounded", "repetitive"].includes(done.extractive_reason) ? "chat.replaced" : "chat.extractive");
          answer.replaceChildren(...withCitationLinks(text, done.citations));
          sources.replaceChildren(...done.citations.map((citation) => h("li", {},
            h("button", { type: "button", class: "citation", "data-n": citation.n, onclick: () => openPassage(citation) },
              h("b", {}, `[${citation.n}]`), h("span", { dir: "auto" }, citation.title),
              citation.page ? ` · ${t("chat.page", { page: citation.page })}` : ""))));
        }
      }
      if (!finished) throw new NetworkFailure("the stream ended early");
    } catch (failure) {
      if (failure.name === "AbortError") return;
      problem.textContent = failure instanceof NetworkFailure || failure instanceof TypeError
        ? t("err.interrupted") : describe(failure);
      problem.hidden = false;
      if (!text) answer.textContent = "";
    } finally {
      answer.removeAttribute("aria-busy");
      ask.disabled = false;
    }
  } },
    h("fieldset", {}, h("legend", {}, t("chat.in")), bases.map((kb, i) => h("label", {}, boxes[i], kb.name))),
    models.length ? h("label", {}, t("chat.model"), modelSelect) : null,
    h("label", {}, t("chat.question"), question),
    h("p", {}, ask));
  question.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
  });
  view(t("chat.title"), form, conversation);
  question.focus();
}

// "[2]" in the answer becomes a button that opens passage 2.
function withCitationLinks(text, citations) {
  const byNumber = new Map(citations.map((c) => [String(c.n), c]));
  return text.split(/(\[\d+\])/).map((part) => {
    const citation = byNumber.get(part.slice(1, -1));
    if (!/^\[\d+\]$/.test(part) || !citation) return part;
    return h("button", { type: "button", class: "cite-inline", "aria-label": t("chat.passage", { n: citation.n, title: citation.title }),
      onclick: () => openPassage(citation) }, part);
  });
}

async function openPassage(citation) {
  const dialog = document.getElementById("dialog");
  const body = document.getElementById("dialog-body");
  document.getElementById("dialog-title").replaceChildren(`[${citation.n}] `, h("bdi", {}, citation.title));
  body.textContent = citation.snippet;
  body.setAttribute("dir", "auto");
  dialog.showModal();
  try {
    const chunk = await api("GET", `/api/chunks/${citation.chunk_id}`);
    body.textContent = chunk.content;
    if (chunk.language) body.setAttribute("lang", chunk.language);
    body.setAttribute("dir", chunk.language === "ar" ? "rtl" : "auto");
  } catch (failure) {
    body.replaceChildren(h("p", { class: "error-text", role: "alert" }, describe(failure)), citation.snippet);
  }
}

// ---- workflows -------------------------------------------------------------------

async function showWorkflows() {
  
  const workflows = await api("GET", "/api/workflows?limit=100");
  const controllers = [];
  leaveView = () => controllers.forEach((c) => c.abort());
  if (!workflows.length) {
    view(t("wf.title"), h("p", { class: "card muted" }, t("wf.empty")));
    return;
  }
  const cards = workflows.map((workflow) => {
    const input = h("textarea", { dir: "auto", rows: 2, required: true });
    const run = h("button", { type: "submit" }, t("wf.run"));
    const result = h("div", { class: "run" });
    const form = h("form", { class: "card", "data-workflow": workflow.name, onsubmit: async (event) => {
      event.preventDefault();
      run.disabled = true;
      const controller = new AbortController();
      controllers.push(controller);
      try {
        const execution = await api("POST", `/api/workflows/${workflow.id}/executions`, { input: input.value });
        await followExecution(workflow, execution, result, controller.signal);
      } catch (failure) {
        if (failure.name !== "AbortError") {
          result.append(h("p", { class: "alert error", role: "alert" },
            failure instanceof TypeError ? t("err.network") : describe(failure)));
        }
      } finally {
        run.disabled = false;
      }
    } },
      h("h2", {}, workflow.name),
      workflow.description ? h("p", { class: "muted", dir: "auto" }, workflow.description) : null,
      h("p", { class: "muted" }, t("wf.agents", { count: workflow.agents.length }), " · ",
        h("bdi", {}, workflow.agents.map((a) => a.name).join(" → "))),
      h("label", {}, t("wf.input", { name: workflow.name }), input),
      h("p", {}, run),
      result);
    return form;
  });
  view(t("wf.title"), ...cards);
}

async function followExecution(workflow, execution, container, signal) {
  const title = h("h3", { "aria-live": "polite" });
  const steps = new Map();
  const list = h("ul", { class: "steps", "aria-label": workflow.name });
  const setRun = (status) => { title.replaceChildren(t("wf.run.status", { status: "" }), badge(status)); title.dataset.status = status; };
  // In the order the workflow lists its agents, which is the order they were written in.
  const order = new Map(workflow.agents.map((agent, i) => [agent.name, i]));
  const ordered = [...(execution.steps || [])].sort((a, b) => (order.get(a.agent) ?? 99) - (order.get(b.agent) ?? 99));
  for (const step of ordered) {
    const status = h("span", {}, badge(step.status));
    const out = h("div", { class: "out", dir: "auto" });
    steps.set(step.agent, { status, out });
    list.append(h("li", { "data-agent": step.agent }, h("strong", {}, step.agent), status, out));
  }
  setRun(execution.status);
  const output = h("div", { class: "answer", dir: "auto" });
  container.replaceChildren(title, list, output);
  const response = await streamRequest("GET",
    `/api/workflows/${workflow.id}/executions/${execution.id}/events`, undefined, signal);
  const statusOf = { "agent.started": "running", "agent.succeeded": "succeeded", "agent.failed": "failed",
    "agent.skipped": "skipped", "agent.cancelled": "cancelled" };
  for await (const message of serverSentEvents(response)) {
    if (message.event !== "status") continue;
    const event = JSON.parse(message.data);
    if (event.type === "execution.started") setRun("running");
    const step = event.agent && steps.get(event.agent);
    if (step && statusOf[event.type]) {
      step.status.replaceChildren(badge(statusOf[event.type]));
      if (event.data?.error) step.out.textContent = event.data.error;
    }
    if (event.type === "execution.finished") {
      const finished = await api("GET", `/api/workflows/${workflow.id}/executions/${execution.id}`);
      setRun(finished.status);
      for (const done of finished.steps || []) {
        const step = steps.get(done.agent);
        if (step && done.output) step.out.textContent = done.output;
      }
      output.replaceChildren(finished.output ? h("h4", {}, t("wf.output")) : "", finished.output || finished.error || "");
      return;
    }
  }
}

// ---- administration --------------------------------------------------------------

async function showAdmin() {
  
  if (!isAdmin()) throw new ApiFailure(403, "forbidden", "");
  const [users, keys, usage] = await Promise.all([
    api("GET", "/api/users?limit=100"),
    api("GET", "/api/keys?limit=100&sort=created_at&order=desc"),
    api("GET", "/api/usage"),
  ]);

  const email = h("input", { type: "email", required: true, autocomplete: "off" });
  const password = h("input", { type: "password", required: true, minlength: 10, autocomplete: "new-password" });
  const role = h("select", {}, ["user", "tenant_admin"].map((r) => h("option", { value: r }, t(`role.${r}`))));
  const userError = h("p", { class: "alert error", role: "alert", hidden: true });
  const usersCard = h("section", { class: "card", "aria-labelledby": "users-title" },
    h("h2", { id: "users-title" }, t("users.title")),
    h("div", { class: "table" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, t("users.email")), h("th", { scope: "col" }, t("users.role")),
        h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, t("users.remove"))))),
      h("tbody", {}, users.map((u) => h("tr", { "data-user": u.email }, h("td", {}, u.email), h("td", {}, t(`role.${u.role}`)),
        h("td", {}, u.id === session.me?.user?.id ? null : h("button", { type: "button", class: "danger",
          "aria-label": `${t("users.remove")} ${u.email}`, onclick: async () => {
            if (!confirm(t("users.confirm", { email: u.email }))) return;
            try { await api("DELETE", `/api/users/${u.id}`); route(); } catch (failure) { notify(describe(failure), "error"); }
          } }, t("users.remove")))))))),
    h("form", { onsubmit: async (event) => {
      event.preventDefault();
      userError.hidden = true;
      try {
        await api("POST", "/api/users", { email: email.value, password: password.value, role: role.value });
        notify(t("users.added", { email: email.value }), "info", true);
        route();
      } catch (failure) { userError.textContent = describe(failure); userError.hidden = false; }
    } },
      h("div", { class: "row spaced" },
        h("label", {}, t("users.email"), email), h("label", {}, t("users.password"), password),
        h("label", {}, t("users.role"), role), h("button", { type: "submit" }, t("users.add"))),
      userError));

  const keyName = h("input", { required: true, maxlength: 200, id: "key-name" });
  const scopes = ["query", "ingest", "admin"].map((scope) => h("input", { type: "checkbox", value: scope, checked: scope === "query" }));
  const keyError = h("p", { class: "alert error", role: "alert", hidden: true });
  const secret = h("div", { id: "new-key", hidden: true });
  const keysCard = h("section", { class: "card", "aria-labelledby": "keys-title" },
    h("h2", { id: "keys-title" }, t("keys.title")),
    h("form", { onsubmit: async (event) => {
      event.preventDefault();
      keyError.hidden = true;
      try {
        const created = await api("POST", "/api/keys", { name: keyName.value.trim(),
          scopes: scopes.filter((s) => s.checked).map((s) => s.value) });
        // The secret is shown here once; re-rendering the page drops it for good.
        const value = h("p", { class: "secret", "data-secret": true, tabindex: 0 }, created.key);
        secret.replaceChildren(h("p", { class: "alert info", role: "status" }, t("keys.once")),
          h("h3", {}, t("keys.secret", { name: created.name })), value,
          h("button", { type: "button", class: "quiet", onclick: () => navigator.clipboard?.writeText(created.key) }, t("keys.copy")));
        secret.hidden = false;
        keyName.value = "";
        await refreshKeys();
        value.focus();
      } catch (failure) { keyError.textContent = describe(failure); keyError.hidden = false; }
    } },
      h("label", {}, t("keys.name"), keyName),
      h("fieldset", { class: "spaced" }, h("legend", {}, t("keys.scopes")), scopes.map((box) => h("label", {}, box, t(`scope.${box.value}`)))),
      h("p", {}, h("button", { type: "submit" }, t("keys.create"))),
      keyError),
    secret,
    h("div", { class: "table", id: "keys-table" }));

  async function refreshKeys(list) {
    const rows = list || await api("GET", "/api/keys?limit=100&sort=created_at&order=desc");
    document.getElementById("keys-table")?.replaceChildren(h("table", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, t("keys.name")), h("th", { scope: "col", class: "wide" }, t("keys.prefix")),
        h("th", { scope: "col", class: "wide" }, t("keys.scopes")), h("th", { scope: "col" }, t("keys.used")), h("th", { scope: "col" }, t("doc.status")))),
      h("tbody", {}, rows.map((key) => h("tr", { "data-key": key.name },
        h("td", {}, key.name), h("td", { class: "wide", dir: "ltr" }, h("code", {}, `${key.key_prefix}…`)),
        h("td", { class: "wide" }, key.scopes.map((s) => t(`scope.${s}`)).join(", ")),
        h("td", {}, key.usage_count),
        h("td", {}, key.revoked_at ? h("span", { class: "badge s-cancelled" }, t("keys.revoked"))
          : h("button", { type: "button", class: "danger", onclick: async () => {
            if (!confirm(t("keys.confirm", { name: key.name }))) return;
            try { await api("DELETE", `/api/keys/${key.id}`); await refreshKeys(); } catch (failure) { notify(describe(failure), "error"); }
          } }, t("keys.revoke"))))))));
  }

  const usageCard = h("section", { class: "card", "aria-labelledby": "usage-title" },
    h("h2", { id: "usage-title" }, t("usage.title")),
    h("div", { class: "grid" },
      h("div", {}, h("div", { class: "stat", id: "usage-requests" }, usage.requests), h("div", { class: "muted" }, t("usage.requests"))),
      h("div", {}, h("div", { class: "stat" }, usage.errors), h("div", { class: "muted" }, t("usage.errors")))),
    usage.top_endpoints.length ? h("div", { class: "table" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, t("usage.endpoint")), h("th", { scope: "col" }, t("usage.requests")),
        h("th", { scope: "col" }, t("usage.p95")))),
      h("tbody", {}, usage.top_endpoints.map((e) => h("tr", {},
        h("td", { dir: "ltr" }, h("code", {}, `${e.method} ${e.endpoint}`)), h("td", {}, e.requests),
        h("td", {}, e.p95_ms === null || e.p95_ms === undefined ? "—" : Math.round(e.p95_ms)))))))
      : h("p", { class: "muted" }, t("usage.none")));

  view(t("admin.title"), keysCard, usersCard, usageCard);
  await refreshKeys(keys);
}

// ---- start -----------------------------------------------------------------------

document.getElementById("lang").addEventListener("change", (event) => {
  lang = event.target.value;
  window.localStorage.setItem("iaf.console.lang", lang);
  applyLanguage();
  route();
});
document.getElementById("dialog").addEventListener("close", () => {
  document.querySelector(".citation:focus-visible, .citation")?.blur();
});
// The router owns the URL's fragment: the skip link moves the focus without changing it.
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("main").focus();
});
window.addEventListener("hashchange", route);
applyLanguage();
route();
