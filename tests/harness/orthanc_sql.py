"""A SELECT over Orthanc's PostgreSQL index (plugin 4.0, Orthanc 1.10) that returns ONE ROW PER
INSTANCE, for the gateway's DB connector tests.

What was checked on a real index (the `orthanc_pg` fixture):
- `resources(internalid, resourcetype, publicid, parentid)`: resourcetype 0 patient, 1 study,
  2 series, 3 instance (the PostgreSQL plugin; Orthanc's SQLite index uses 1..4);
- `maindicomtags(id, taggroup, tagelement, value)`: tags as DECIMAL group/element. Orthanc
  copies the patient tags (0010,0010/0020/0030/0040) onto each study, so they are read at study
  level: the patient resource keeps one name per PatientID, the study keeps its own. An empty
  attribute is stored as '' (not NULL); a tag the file lacks has no row (NULL through the
  LEFT JOIN);
- SOPClassUID is not a main DICOM tag: it is `metadata` type 10 (Instance_SopClassUid);
- `attachedfiles` filetype 1 is the DICOM file, stored at
  StorageDirectory/uuid[0:2]/uuid[2:4]/uuid.

The statement ends in a WHERE clause, so " AND <column> IN (...)" can be appended with a
column from ORTHANC_PG_COLUMNS (qualified expressions, valid in that WHERE clause). A caller
that wraps the statement as a subquery uses the output aliases (ORTHANC_PG_ALIASES) instead.
"""

from __future__ import annotations

# Decimal tags used below: 16/16 PatientName (0010,0010), 16/32 PatientID, 16/48 PatientBirthDate,
# 16/64 PatientSex, 32/13 StudyInstanceUID (0020,000D), 8/32 StudyDate (0008,0020), 8/48 StudyTime,
# 8/80 AccessionNumber (0008,0050), 32/16 StudyID, 8/144 ReferringPhysicianName (0008,0090),
# 8/4144 StudyDescription (0008,1030), 32/14 SeriesInstanceUID, 8/96 Modality (0008,0060),
# 8/4158 SeriesDescription (0008,103E), 32/17 SeriesNumber, 8/24 SOPInstanceUID (0008,0018),
# 32/19 InstanceNumber (0020,0013).
ORTHANC_PG_SELECT: str = """\
SELECT
  t_patient_name.value AS patient_name,
  t_patient_id.value AS patient_id,
  t_birth_date.value AS patient_birth_date,
  t_sex.value AS patient_sex,
  t_study_uid.value AS study_instance_uid,
  t_study_date.value AS study_date,
  t_study_time.value AS study_time,
  t_accession.value AS accession_number,
  t_study_id.value AS study_id,
  t_referring.value AS referring_physician_name,
  t_study_desc.value AS study_description,
  t_series_uid.value AS series_instance_uid,
  t_modality.value AS modality,
  t_series_desc.value AS series_description,
  t_series_number.value AS series_number,
  t_sop_uid.value AS sop_instance_uid,
  t_sop_class.value AS sop_class_uid,
  t_instance_number.value AS instance_number,
  substr(f.uuid, 1, 2) || '/' || substr(f.uuid, 3, 2) || '/' || f.uuid AS file_path
FROM resources i
JOIN resources se ON se.internalid = i.parentid
JOIN resources st ON st.internalid = se.parentid
LEFT JOIN maindicomtags t_patient_name ON t_patient_name.id = st.internalid
  AND t_patient_name.taggroup = 16 AND t_patient_name.tagelement = 16
LEFT JOIN maindicomtags t_patient_id ON t_patient_id.id = st.internalid
  AND t_patient_id.taggroup = 16 AND t_patient_id.tagelement = 32
LEFT JOIN maindicomtags t_birth_date ON t_birth_date.id = st.internalid
  AND t_birth_date.taggroup = 16 AND t_birth_date.tagelement = 48
LEFT JOIN maindicomtags t_sex ON t_sex.id = st.internalid
  AND t_sex.taggroup = 16 AND t_sex.tagelement = 64
LEFT JOIN maindicomtags t_study_uid ON t_study_uid.id = st.internalid
  AND t_study_uid.taggroup = 32 AND t_study_uid.tagelement = 13
LEFT JOIN maindicomtags t_study_date ON t_study_date.id = st.internalid
  AND t_study_date.taggroup = 8 AND t_study_date.tagelement = 32
LEFT JOIN maindicomtags t_study_time ON t_study_time.id = st.internalid
  AND t_study_time.taggroup = 8 AND t_study_time.tagelement = 48
LEFT JOIN maindicomtags t_accession ON t_accession.id = st.internalid
  AND t_accession.taggroup = 8 AND t_accession.tagelement = 80
LEFT JOIN maindicomtags t_study_id ON t_study_id.id = st.internalid
  AND t_study_id.taggroup = 32 AND t_study_id.tagelement = 16
LEFT JOIN maindicomtags t_referring ON t_referring.id = st.internalid
  AND t_referring.taggroup = 8 AND t_referring.tagelement = 144
LEFT JOIN maindicomtags t_study_desc ON t_study_desc.id = st.internalid
  AND t_study_desc.taggroup = 8 AND t_study_desc.tagelement = 4144
LEFT JOIN maindicomtags t_series_uid ON t_series_uid.id = se.internalid
  AND t_series_uid.taggroup = 32 AND t_series_uid.tagelement = 14
LEFT JOIN maindicomtags t_modality ON t_modality.id = se.internalid
  AND t_modality.taggroup = 8 AND t_modality.tagelement = 96
LEFT JOIN maindicomtags t_series_desc ON t_series_desc.id = se.internalid
  AND t_series_desc.taggroup = 8 AND t_series_desc.tagelement = 4158
LEFT JOIN maindicomtags t_series_number ON t_series_number.id = se.internalid
  AND t_series_number.taggroup = 32 AND t_series_number.tagelement = 17
LEFT JOIN maindicomtags t_sop_uid ON t_sop_uid.id = i.internalid
  AND t_sop_uid.taggroup = 8 AND t_sop_uid.tagelement = 24
LEFT JOIN metadata t_sop_class ON t_sop_class.id = i.internalid AND t_sop_class.type = 10
LEFT JOIN maindicomtags t_instance_number ON t_instance_number.id = i.internalid
  AND t_instance_number.taggroup = 32 AND t_instance_number.tagelement = 19
LEFT JOIN attachedfiles f ON f.id = i.internalid AND f.filetype = 1
WHERE i.resourcetype = 3"""

ORTHANC_PG_COLUMNS: dict[str, str] = {
    "accession-number-column": "t_accession.value",
    "patient-id-column": "t_patient_id.value",
    "study-instance-uid-column": "t_study_uid.value",
    "serie-instance-uid-column": "t_series_uid.value",
    "sop-instance-uid-column": "t_sop_uid.value",
}

ORTHANC_PG_ALIASES: dict[str, str] = {
    "accession-number-column": "accession_number",
    "patient-id-column": "patient_id",
    "study-instance-uid-column": "study_instance_uid",
    "serie-instance-uid-column": "series_instance_uid",
    "sop-instance-uid-column": "sop_instance_uid",
}
