// Chat: streamed answers with clickable sources, the conversation sidebar, the chat-memory marker.
import { ApiError, openEvents, request } from './api.js';
import { $, el, pageLabel, renderAnswer, timeAgo, toast } from './dom.js';
import { icons } from './icons.js';

const SUGGESTIONS = [
  'Summarize the main topics of my documents',
  'What are the key definitions?',
  'Which steps does the guide recommend?',
];

export class ChatView {
  /** scope(): the collection ids a question searches (null: all of the user's collections). */
  constructor({ hasDocuments = () => false, scope = () => null } = {}) {
    this.scope = scope;
    this.messages = $('#messages');
    this.list = $('#conversation-list');
    this.title = $('#chat-title');
    this.form = $('#composer');
    this.input = $('#question');
    this.sendButton = $('#send');
    this.dialog = $('#source-dialog');
    this.hasDocuments = hasDocuments;
    this.conversationId = null;
    this.conversations = [];
    this.busy = false;
    this.bind();
  }

  bind() {
    this.sendButton.innerHTML = icons.send;
    $('#new-chat').innerHTML = `${icons.plus}<span>New chat</span>`;
    $('#source-close').innerHTML = icons.x;
    $('#new-chat').addEventListener('click', () => { this.open(null); document.body.dispatchEvent(new Event('closepanels')); });
    this.form.addEventListener('submit', (event) => { event.preventDefault(); this.submit(); });
    this.input.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) { event.preventDefault(); this.submit(); }
    });
    this.input.addEventListener('input', () => this.autosize());
    this.dialog.addEventListener('click', (event) => { if (event.target === this.dialog) this.dialog.close(); });
    this.autosize();
  }

  autosize() {
    this.input.style.height = '';
    if (this.input.value && this.input.scrollHeight) {
      this.input.style.height = `${Math.min(this.input.scrollHeight, 200)}px`;
    }
    this.sendButton.disabled = this.busy || !this.input.value.trim();
  }

  reset() {
    this.conversationId = null;
    this.conversations = [];
    this.list.replaceChildren();
    this.showWelcome();
  }

  // conversations ---------------------------------------------------------------------------------

  async loadConversations() {
    try {
      const reply = await request('/api/chat/conversations?limit=100');
      this.conversations = reply.conversations;
    } catch (failure) {
      if (failure.status !== 501) toast(`Conversations: ${failure.message}`, 'error');
      this.conversations = [];
    }
    this.renderConversations();
  }

  renderConversations() {
    if (!this.conversations.length) {
      this.list.replaceChildren(el('div', { class: 'empty-note', text: 'Your conversations will appear here.' }));
      return;
    }
    this.list.replaceChildren(...this.conversations.map((c) => el('div', {
      class: 'conv', role: 'button', tabindex: '0', 'data-testid': 'conversation', 'data-id': c.id,
      'aria-current': String(c.id === this.conversationId),
      onclick: () => { this.open(c.id); document.body.dispatchEvent(new Event('closepanels')); },
      onkeydown: (e) => { if (e.key === 'Enter') this.open(c.id); },
    },
    el('span', { class: 'conv-icon', html: icons.chat }),
    el('div', { class: 'conv-text' },
      el('div', { class: 'conv-title', text: c.title || 'Untitled' }),
      el('div', { class: 'conv-meta', text: `${c.turn_count} ${c.turn_count === 1 ? 'message' : 'messages'} · ${timeAgo(c.updated_at)}` })),
    el('button', {
      type: 'button', class: 'icon-btn', title: 'Delete conversation', 'aria-label': 'Delete conversation',
      'data-testid': 'conversation-delete', html: icons.trash,
      onclick: (e) => { e.stopPropagation(); this.remove(c); },
    }))));
  }

  async remove(conversation) {
    if (!window.confirm(`Delete “${conversation.title || 'this conversation'}”? Docent forgets it, memory included.`)) return;
    try {
      await request(`/api/chat/conversations/${encodeURIComponent(conversation.id)}`, { method: 'DELETE' });
      if (conversation.id === this.conversationId) this.open(null);
      this.conversations = this.conversations.filter((c) => c.id !== conversation.id);
      this.renderConversations();
    } catch (failure) {
      toast(failure.message, 'error');
    }
  }

  async open(id) {
    if (this.busy) return;
    this.conversationId = id;
    this.renderConversations();
    if (!id) {
      this.title.textContent = 'New conversation';
      this.showWelcome();
      this.input.focus();
      return;
    }
    try {
      const conversation = await request(`/api/chat/conversations/${encodeURIComponent(id)}`);
      if (this.conversationId !== id) return;
      this.title.textContent = conversation.title || 'Conversation';
      this.messages.replaceChildren();
      for (const turn of conversation.turns || []) {
        this.appendUser(turn.query);
        this.finish(this.appendAssistant(), turn);
      }
      this.scrollDown(false);
    } catch (failure) {
      toast(failure.message, 'error');
    }
  }

  // messages --------------------------------------------------------------------------------------

  showWelcome() {
    const ready = this.hasDocuments();
    this.messages.replaceChildren(el('div', { class: 'welcome', 'data-testid': 'welcome' },
      el('div', { class: 'welcome-badge', html: icons.spark }),
      el('h3', { text: ready ? 'Ask your documents anything' : 'Start by adding a document' }),
      el('p', { text: ready
        ? 'Answers quote the passages they come from, with the file and page. Docent also remembers what you discussed.'
        : 'Drop PDFs, Word files or notes in the Documents panel. Once they are ready, ask questions here.' }),
      ready ? el('div', { class: 'suggestions' }, SUGGESTIONS.map((text) => el('button', {
        type: 'button', class: 'suggestion', text, onclick: () => { this.input.value = text; this.submit(); },
      }))) : null));
  }

  refreshWelcome() {
    if ($('.welcome', this.messages)) this.showWelcome();
  }

  appendUser(text) {
    $('.welcome', this.messages)?.remove();
    const node = el('div', { class: 'msg msg-user', 'data-testid': 'user-message' }, el('div', { class: 'bubble', text }));
    this.messages.append(node);
    return node;
  }

  appendAssistant() {
    const text = el('div', { class: 'answer-text' }, el('span', { class: 'thinking', 'aria-label': 'Thinking' }, el('i'), el('i'), el('i')));
    const node = el('div', { class: 'msg msg-assistant', 'data-testid': 'assistant-message' },
      el('div', { class: 'msg-avatar', 'aria-hidden': 'true' }),
      el('div', { class: 'msg-body' }, el('div', { class: 'answer' }, text), el('div', { class: 'msg-foot' })));
    this.messages.append(node);
    return node;
  }

  finish(node, turn) {
    node.classList.remove('streaming');
    node.dataset.turnId = turn.turn_id;
    node.dataset.chatContextUsed = String(turn.chat_context_used);
    const text = $('.answer-text', node);
    text.innerHTML = renderAnswer(turn.answer || '', turn.sources || []);
    text.onclick = (event) => {
      const button = event.target.closest('.cite');
      const source = button && (turn.sources || []).find((s) => String(s.marker) === button.dataset.marker);
      if (source) this.showSource(source);
    };
    const foot = $('.msg-foot', node);
    foot.replaceChildren();
    if (turn.chat_context_used) {
      foot.append(el('span', {
        class: 'pill pill-memory', 'data-testid': 'memory-used',
        title: 'Earlier conversation turns were part of the context for this answer',
      }, el('span', { html: icons.memory }), 'Used chat memory'));
    }
    // cited passages first; the rest of the context the answer was given follows, muted
    // (turns stored before the `cited` flag existed listed cited passages only)
    const sources = turn.sources || [];
    const cited = sources.filter((s) => s.cited !== false);
    const others = sources.filter((s) => s.cited === false);
    const chip = (source, testid, extra = '') => el('button', {
      type: 'button', class: `source-chip${extra}`, 'data-testid': testid, title: source.snippet,
      'data-page-start': source.page_start, 'data-page-end': source.page_end,
      onclick: () => this.showSource(source),
    }, el('span', { class: 'n', text: String(source.marker) }), el('span', { class: 'name', text: source.filename }),
    el('span', { class: 'page', text: pageLabel(source) }));
    if (cited.length) {
      foot.append(el('span', { class: 'sources-label', text: 'Sources' }));
      for (const source of cited) foot.append(chip(source, 'source-chip'));
    }
    if (others.length) {
      const more = el('details', { class: 'more-sources', 'data-testid': 'more-sources' },
        el('summary', { text: cited.length ? `${others.length} more retrieved` : `Retrieved passages (${others.length})` }));
      for (const source of others) more.append(chip(source, 'context-chip', ' muted'));
      foot.append(more);
    }
    const ms = turn.timings?.total_ms;
    if (ms) foot.append(el('span', { class: 'msg-meta', text: `${turn.model || ''} · ${ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`}` }));
  }

  showSource(source) {
    $('#source-file').textContent = source.filename;
    const meta = $('#source-meta');
    meta.replaceChildren(
      el('span', { class: 'pill', 'data-testid': 'source-page', text: pageLabel(source) || 'page unknown' }),
      el('span', { class: 'pill', text: `relevance ${Number(source.relevance_score).toFixed(2)}` }),
      el('span', { class: 'pill', text: `passage #${source.chunk_index + 1}` }),
    );
    $('#source-snippet').textContent = source.snippet;
    this.dialog.showModal();
  }

  scrollDown(smooth = true) {
    this.messages.scrollTo({ top: this.messages.scrollHeight, behavior: smooth ? 'smooth' : 'auto' });
  }

  async submit() {
    const query = this.input.value.trim();
    if (!query || this.busy) return;
    this.busy = true;
    this.input.value = '';
    this.autosize();
    this.appendUser(query);
    const node = this.appendAssistant();
    node.classList.add('streaming');
    this.scrollDown();
    const text = $('.answer-text', node);
    let answer = '';
    let tokens = 0;
    let finished = false;
    try {
      const body = { query };
      if (this.conversationId) body.conversation_id = this.conversationId;
      const collectionIds = this.scope();
      if (collectionIds) body.collection_ids = collectionIds;
      const events = await openEvents('/api/chat/stream', { json: body });
      for await (const { event, data } of events) {
        if (event === 'conversation' && data.conversation_id !== this.conversationId) {
          this.conversationId = data.conversation_id;
          this.title.textContent = query;
          this.conversations.unshift({ id: data.conversation_id, title: query, turn_count: 0, updated_at: new Date().toISOString() });
          this.renderConversations();
        } else if (event === 'token') {
          answer += data.delta;
          tokens += 1;
          node.dataset.tokenEvents = String(tokens);
          text.textContent = answer;
          this.scrollDown(false);
        } else if (event === 'done') {
          finished = true;
          this.finish(node, data);
        } else if (event === 'error') {
          throw new ApiError(data.status, data.detail, data.reason);
        }
      }
      if (!finished) throw new ApiError(0, 'The answer stream ended early. Please try again.');
    } catch (failure) {
      node.classList.remove('streaming');
      node.classList.add('error');
      text.textContent = failure.status === 501 ? 'Chat is not available on this server yet.' : failure.message;
      if (failure.reason) node.dataset.errorReason = failure.reason;
      // over the limit: the question was not asked, keep it in the box to send again later
      if (failure.status === 429 && !this.input.value) this.input.value = query;
    } finally {
      this.busy = false;
      this.autosize();
      this.scrollDown();
      this.loadConversations();
    }
  }
}
