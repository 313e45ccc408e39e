-- Argo CD health check for cadml.io resources (Model, ModelVersion, RolloutPolicy,
-- ReleaseRecord), from the kstatus conditions the operator writes.
-- Healthy: Ready=True for the current generation. Degraded: Stalled=True (an invalid
-- spec: the message names the field and rule), a canary aborted by analysis, or a
-- rollback slower than one refresh cycle. Progressing: everything else.
-- A RolloutPolicy with canary steps (status.stepPhase): Progressing while it walks,
-- Suspended at a pause (it waits for `cadml rollout resume`, or its duration), Degraded
-- once aborted, Healthy when every step passed (ReadyToPromote).
local hs = {status = "Progressing", message = "Waiting for the cadml operator"}
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Status describes generation " .. observed .. "; the spec is at " .. generation
  return hs
end
local ready = nil
for _, c in ipairs(obj.status.conditions) do
  if c.type == "Stalled" and c.status == "True" then
    hs.status = "Degraded"
    hs.message = c.message or c.reason
    return hs
  end
  if c.type == "RolloutHealthy" and c.status == "False" then
    hs.status = "Degraded"
    hs.message = (c.reason or "") .. ": " .. (c.message or "")
    return hs
  end
  if c.type == "RollbackSLOBreached" and c.status == "True" then
    hs.status = "Degraded"
    hs.message = c.message or c.reason
    return hs
  end
  if c.type == "Ready" then
    ready = c
  end
end
local phase = obj.status.stepPhase
local step = ""
if obj.status.currentStepIndex ~= nil then
  step = "step " .. (obj.status.currentStepIndex + 1) .. ", canary at " ..
    (obj.status.canaryWeight or 0) .. " %"
end
if phase == "Aborted" then
  hs.status = "Degraded"
  hs.message = "Canary steps aborted at " .. step
  return hs
end
if ready ~= nil and ready.status == "True" and phase == "Paused" then
  hs.status = "Suspended"
  hs.message = "Paused at " .. step .. ": cadml rollout resume, or wait for its duration"
  return hs
end
if ready ~= nil and ready.status == "True" and phase == "Progressing" then
  hs.message = "Walking canary steps: " .. step
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = "Ready"
  if obj.status.routingSummary ~= nil then
    hs.message = "Ready: " .. obj.status.routingSummary
  end
  return hs
end
if ready ~= nil then
  hs.message = (ready.reason or "") .. ": " .. (ready.message or "")
end
return hs
