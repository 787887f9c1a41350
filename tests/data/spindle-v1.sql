-- A database as the first release (schema version 1) wrote it, with a turn
-- left running by a crash. Root, fork and archived last-turn fork:
-- ff521e75-6ff4-4b3c-ae9d-51399555437d, 3ab9f7f7-8319-44b6-b048-4124187a9795,
-- 37d32822-8510-429a-9e5c-791fe27112ac.
PRAGMA user_version=1;
BEGIN TRANSACTION;
CREATE TABLE items (
    thread_id TEXT NOT NULL REFERENCES threads(id),
    seq INTEGER NOT NULL,
    turn_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    inheritable INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (thread_id, seq)
);
INSERT INTO "items" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',0,'7c2b0300-36b8-4b21-9fbe-4676f725e0a5','message',1,'{"type": "message", "role": "user", "text": "one"}');
INSERT INTO "items" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',1,'7c2b0300-36b8-4b21-9fbe-4676f725e0a5','reasoning',0,'{"type": "reasoning", "summary": "thought", "encrypted_content": "enc"}');
INSERT INTO "items" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',2,'7c2b0300-36b8-4b21-9fbe-4676f725e0a5','message',1,'{"type": "message", "role": "assistant", "text": "echo: one", "phase": "final_answer"}');
INSERT INTO "items" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',3,'5ad4f32b-4a43-4794-93a0-15afe4c560ec','message',1,'{"type": "message", "role": "user", "text": "two"}');
INSERT INTO "items" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',4,'5ad4f32b-4a43-4794-93a0-15afe4c560ec','reasoning',0,'{"type": "reasoning", "summary": "thought", "encrypted_content": "enc"}');
INSERT INTO "items" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',5,'5ad4f32b-4a43-4794-93a0-15afe4c560ec','message',1,'{"type": "message", "role": "assistant", "text": "echo: two", "phase": "final_answer"}');
INSERT INTO "items" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',6,'db138a16-1123-41ed-8520-dc3bd7bf0759','message',1,'{"type": "message", "role": "user", "text": "three"}');
INSERT INTO "items" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',7,'db138a16-1123-41ed-8520-dc3bd7bf0759','reasoning',0,'{"type": "reasoning", "summary": "thought", "encrypted_content": "enc"}');
INSERT INTO "items" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',8,'db138a16-1123-41ed-8520-dc3bd7bf0759','message',1,'{"type": "message", "role": "assistant", "text": "echo: three", "phase": "final_answer"}');
INSERT INTO "items" VALUES('3ab9f7f7-8319-44b6-b048-4124187a9795',0,'f2124ef5-a5bf-4cd0-b891-97ea6077a80a','message',1,'{"type": "message", "role": "user", "text": "four"}');
INSERT INTO "items" VALUES('3ab9f7f7-8319-44b6-b048-4124187a9795',1,'f2124ef5-a5bf-4cd0-b891-97ea6077a80a','reasoning',0,'{"type": "reasoning", "summary": "thought", "encrypted_content": "enc"}');
INSERT INTO "items" VALUES('3ab9f7f7-8319-44b6-b048-4124187a9795',2,'f2124ef5-a5bf-4cd0-b891-97ea6077a80a','message',1,'{"type": "message", "role": "assistant", "text": "echo: four", "phase": "final_answer"}');
CREATE TABLE segments (
    thread_id TEXT NOT NULL REFERENCES threads(id),
    position INTEGER NOT NULL,
    source_thread_id TEXT NOT NULL REFERENCES threads(id),
    from_seq INTEGER NOT NULL,
    to_seq INTEGER NOT NULL,
    PRIMARY KEY (thread_id, position)
);
INSERT INTO "segments" VALUES('3ab9f7f7-8319-44b6-b048-4124187a9795',0,'ff521e75-6ff4-4b3c-ae9d-51399555437d',0,9);
INSERT INTO "segments" VALUES('37d32822-8510-429a-9e5c-791fe27112ac',0,'ff521e75-6ff4-4b3c-ae9d-51399555437d',6,9);
CREATE TABLE threads (
    id TEXT PRIMARY KEY,
    parent_id TEXT REFERENCES threads(id),
    origin TEXT NOT NULL,
    session_origin TEXT NOT NULL,
    depth INTEGER NOT NULL,
    agent_nickname TEXT NOT NULL,
    agent_role TEXT NOT NULL,
    sub_agent_kind TEXT NOT NULL,
    parent_spawn_call_id TEXT NOT NULL,
    inherited_prompt_cache_key TEXT,
    window_generation INTEGER NOT NULL,
    cwd TEXT NOT NULL,
    model TEXT NOT NULL,
    instructions TEXT NOT NULL,
    archived INTEGER NOT NULL,
    trust_project_path TEXT,
    trust_trusted INTEGER,
    trust_source TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
INSERT INTO "threads" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',NULL,'start','start',0,'','','','',NULL,0,'/tmp','m','be brief',0,'/tmp',1,'persisted',1700000000.0,1.79570391909206509587e+09);
INSERT INTO "threads" VALUES('3ab9f7f7-8319-44b6-b048-4124187a9795','ff521e75-6ff4-4b3c-ae9d-51399555437d','fork','fork',1,'Fay','','thread_spawn','call_1','ff521e75-6ff4-4b3c-ae9d-51399555437d',0,'/tmp','m','be brief',0,'/tmp',1,'persisted',1700000001.0,1.79570391909311366084e+09);
INSERT INTO "threads" VALUES('37d32822-8510-429a-9e5c-791fe27112ac','ff521e75-6ff4-4b3c-ae9d-51399555437d','fork','fork',1,'','','thread_spawn','call_2','ff521e75-6ff4-4b3c-ae9d-51399555437d',0,'/tmp','m','be brief',1,'/tmp',1,'persisted',1700000002.0,1700000003.0);
CREATE TABLE turns (
    id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL REFERENCES threads(id),
    status TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    error_code TEXT,
    error_message TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    completed_at DOUBLE PRECISION
);
INSERT INTO "turns" VALUES('7c2b0300-36b8-4b21-9fbe-4676f725e0a5','ff521e75-6ff4-4b3c-ae9d-51399555437d','completed',0,10,2,3,NULL,NULL,1.79570391909059214594e+09,1.79570391909098744389e+09);
INSERT INTO "turns" VALUES('5ad4f32b-4a43-4794-93a0-15afe4c560ec','ff521e75-6ff4-4b3c-ae9d-51399555437d','completed',3,10,2,3,NULL,NULL,1.79570391909129905704e+09,1.79570391909151482585e+09);
INSERT INTO "turns" VALUES('db138a16-1123-41ed-8520-dc3bd7bf0759','ff521e75-6ff4-4b3c-ae9d-51399555437d','completed',6,10,2,3,NULL,NULL,1.79570391909180259708e+09,1.79570391909206795695e+09);
INSERT INTO "turns" VALUES('f2124ef5-a5bf-4cd0-b891-97ea6077a80a','3ab9f7f7-8319-44b6-b048-4124187a9795','completed',0,10,2,3,NULL,NULL,1.79570391909291672701e+09,1.79570391909311699867e+09);
CREATE INDEX threads_by_creation ON threads (created_at, id);
CREATE INDEX threads_by_parent ON threads (parent_id, created_at, id);
CREATE INDEX turns_by_thread ON turns (thread_id, first_seq);
CREATE INDEX turns_by_status ON turns (status);
CREATE INDEX items_inheritable ON items (thread_id, inheritable, seq);
INSERT INTO "items" VALUES('ff521e75-6ff4-4b3c-ae9d-51399555437d',9,'00000000-0000-4000-8000-00000000c4a5','message',1,'{"type": "message", "role": "user", "text": "five"}');
INSERT INTO "turns" VALUES('00000000-0000-4000-8000-00000000c4a5','ff521e75-6ff4-4b3c-ae9d-51399555437d','running',9,0,0,0,NULL,NULL,1700000100.0,NULL);
COMMIT;
