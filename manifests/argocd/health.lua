-- Argo CD health check for apprelease.dev/AppRelease.
--
-- Installed as `resource.customizations.health.apprelease.dev_AppRelease` in argocd-cm
-- (argocd-cm-patch.yaml embeds this file; hack/argocd-cm-patch regenerates it). Tested in
-- gopher-lua, the engine Argo CD runs it in, against AppRelease objects captured from real
-- end-to-end runs (tests/go/argocdhealth, tests/testdata/argocd).
--
-- It reads what the operator writes (operator/apprelease/controller/status.py): the
-- conditions Available / Progressing / Degraded with their reasons, observedGeneration and
-- the host counts. Order matters:
--   1. a status about an older generation says nothing about the current spec: Progressing;
--   2. a failure (Degraded=True: HostFailed, InvalidSpec) or a stuck rollout
--      (Progressing=False ProgressDeadlineExceeded): Degraded, with the operator's message;
--      a failure wins over a pause, so pausing cannot hide a failed host;
--   3. spec.paused: Suspended (as Argo CD shows a paused Deployment);
--   4. no Node matches spec.hosts (Available=False NoHostsSelected): Degraded;
--   5. every selected host serves the current revision: Healthy;
--   6. anything else is a rollout under way: Progressing.
--
-- Argo CD runs custom health checks with only the base, table and package libraries (no
-- `string`, no `math`): hence plain `..` concatenation and no string functions here.

local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function result(health, message)
  hs.status = health
  hs.message = message
  return hs
end

local status = obj.status
if status == nil or status.observedGeneration == nil then
  return result("Progressing", "Waiting for the apprelease operator to report on this AppRelease")
end

local generation = obj.metadata.generation
if generation ~= nil and status.observedGeneration < generation then
  return result("Progressing", "Waiting for the apprelease operator to observe generation " .. generation
    .. " (the status describes generation " .. status.observedGeneration .. ")")
end

local degraded = condition(status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  return result("Degraded", degraded.message or ("Degraded: " .. (degraded.reason or "no reason given")))
end

local progressing = condition(status, "Progressing")
if progressing ~= nil and progressing.status == "False" and progressing.reason == "ProgressDeadlineExceeded" then
  return result("Degraded", progressing.message or "ProgressDeadlineExceeded")
end

if obj.spec ~= nil and obj.spec.paused == true then
  local message = "Rollout paused (spec.paused)"
  if progressing ~= nil and progressing.message ~= nil then
    message = progressing.message
  end
  return result("Suspended", message)
end

local available = condition(status, "Available")
-- No Node matches spec.hosts: nothing serves the app and nothing will until someone labels a
-- Node or fixes the selector, so waiting (Progressing) would never end.
if available ~= nil and available.status == "False" and available.reason == "NoHostsSelected" then
  return result("Degraded", available.message or "NoHostsSelected")
end

local desired = status.desiredHosts or 0
local complete = progressing ~= nil and progressing.status == "True" and progressing.reason == "RolloutComplete"
  and desired > 0 and status.readyHosts == desired and status.updatedHosts == desired
if complete and available ~= nil and available.status == "True" then
  return result("Healthy", progressing.message or "Rollout complete")
end

if progressing ~= nil and progressing.message ~= nil then
  return result("Progressing", progressing.message)
end
if available ~= nil and available.message ~= nil then
  return result("Progressing", available.message)
end
return result("Progressing", "Waiting for the rollout")
